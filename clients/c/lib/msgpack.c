// SPDX-License-Identifier: MIT
/* The msgpack subset of the wire protocol (https://github.com/msgpack/msgpack/blob/master/spec.md). */
#include "msgpack.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* --- encoding --------------------------------------------------------------------- */

void mp_buf_init(struct mp_buf *b)
{
	memset(b, 0, sizeof(*b));
}

void mp_buf_free(struct mp_buf *b)
{
	free(b->data);
	mp_buf_init(b);
}

static bool mp_reserve(struct mp_buf *b, size_t n)
{
	if (b->oom)
		return false;
	if (b->len + n <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + n)
		cap *= 2;
	uint8_t *p = realloc(b->data, cap);
	if (!p) {
		b->oom = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

void mp_put_raw(struct mp_buf *b, const void *p, size_t n)
{
	if (!mp_reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void put_u8(struct mp_buf *b, uint8_t v)
{
	mp_put_raw(b, &v, 1);
}

/* A type byte followed by @bytes big-endian bytes of @v. */
static void put_be(struct mp_buf *b, uint8_t type, uint64_t v, int bytes)
{
	uint8_t tmp[9];
	tmp[0] = type;
	for (int i = 0; i < bytes; i++)
		tmp[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
	mp_put_raw(b, tmp, (size_t)bytes + 1);
}

void mp_put_nil(struct mp_buf *b)
{
	put_u8(b, 0xc0);
}

void mp_put_bool(struct mp_buf *b, bool v)
{
	put_u8(b, v ? 0xc3 : 0xc2);
}

void mp_put_uint(struct mp_buf *b, uint64_t v)
{
	if (v < 0x80)
		put_u8(b, (uint8_t)v);
	else if (v <= UINT8_MAX)
		put_be(b, 0xcc, v, 1);
	else if (v <= UINT16_MAX)
		put_be(b, 0xcd, v, 2);
	else if (v <= UINT32_MAX)
		put_be(b, 0xce, v, 4);
	else
		put_be(b, 0xcf, v, 8);
}

void mp_put_int(struct mp_buf *b, int64_t v)
{
	if (v >= 0)
		mp_put_uint(b, (uint64_t)v);
	else if (v >= -32)
		put_u8(b, (uint8_t)(int8_t)v);
	else if (v >= INT8_MIN)
		put_be(b, 0xd0, (uint64_t)v, 1);
	else if (v >= INT16_MIN)
		put_be(b, 0xd1, (uint64_t)v, 2);
	else if (v >= INT32_MIN)
		put_be(b, 0xd2, (uint64_t)v, 4);
	else
		put_be(b, 0xd3, (uint64_t)v, 8);
}

void mp_put_double(struct mp_buf *b, double v)
{
	uint64_t bits;
	memcpy(&bits, &v, sizeof(bits));
	put_be(b, 0xcb, bits, 8);
}

void mp_put_strn(struct mp_buf *b, const char *s, size_t n)
{
	if (n < 32)
		put_u8(b, (uint8_t)(0xa0 | n));
	else if (n <= UINT8_MAX)
		put_be(b, 0xd9, n, 1);
	else if (n <= UINT16_MAX)
		put_be(b, 0xda, n, 2);
	else
		put_be(b, 0xdb, n, 4);
	mp_put_raw(b, s, n);
}

void mp_put_str(struct mp_buf *b, const char *s)
{
	mp_put_strn(b, s, strlen(s));
}

void mp_put_array(struct mp_buf *b, uint32_t n)
{
	if (n < 16)
		put_u8(b, (uint8_t)(0x90 | n));
	else if (n <= UINT16_MAX)
		put_be(b, 0xdc, n, 2);
	else
		put_be(b, 0xdd, n, 4);
}

void mp_put_map(struct mp_buf *b, uint32_t n)
{
	if (n < 16)
		put_u8(b, (uint8_t)(0x80 | n));
	else if (n <= UINT16_MAX)
		put_be(b, 0xde, n, 2);
	else
		put_be(b, 0xdf, n, 4);
}

/* --- decoding --------------------------------------------------------------------- */

/*
 * Two passes over the same bytes: the first validates and counts nodes, the second
 * fills a tree allocated at its exact size, each container's children in one block.
 */
struct mp_reader {
	const uint8_t *p;
	size_t len;
	size_t pos;
	struct mp_obj *nodes; /* NULL in the counting pass */
	size_t next;          /* next free node */
};

static bool take(struct mp_reader *r, size_t n, const uint8_t **out)
{
	if (r->len - r->pos < n)
		return false;
	*out = r->p + r->pos;
	r->pos += n;
	return true;
}

static bool take_be(struct mp_reader *r, int bytes, uint64_t *v)
{
	const uint8_t *q;
	if (!take(r, (size_t)bytes, &q))
		return false;
	*v = 0;
	for (int i = 0; i < bytes; i++)
		*v = (*v << 8) | q[i];
	return true;
}

static bool read_obj(struct mp_reader *r, struct mp_obj *o, int depth);

/* A container of @n entries (@per nodes each): reserves its block, reads each. */
static bool read_items(struct mp_reader *r, struct mp_obj *o, uint64_t n, unsigned per,
		       int depth)
{
	if (depth >= MP_MAX_DEPTH || n > r->len - r->pos) /* every entry takes >= 1 byte */
		return false;
	size_t total = (size_t)n * per;
	size_t first = r->next;
	r->next += total;
	if (o) {
		o->len = (uint32_t)n;
		o->v.items = &r->nodes[first];
	}
	for (size_t i = 0; i < total; i++) {
		struct mp_obj *child = r->nodes ? &r->nodes[first + i] : NULL;
		if (!read_obj(r, child, depth + 1))
			return false;
		/* Map keys are strings in this protocol; anything else is malformed. */
		if (per == 2 && i % 2 == 0 && child && child->type != MP_STR)
			return false;
	}
	return true;
}

static bool read_bytes(struct mp_reader *r, struct mp_obj *o, enum mp_type t, uint64_t n)
{
	const uint8_t *q;
	if (!take(r, (size_t)n, &q))
		return false;
	if (o) {
		o->type = t;
		o->len = (uint32_t)n;
		o->v.s = (const char *)q;
	}
	return true;
}

static bool read_obj(struct mp_reader *r, struct mp_obj *o, int depth)
{
	const uint8_t *q;
	uint64_t v;
	struct mp_obj scratch;
	struct mp_obj *d = o ? o : &scratch;

	if (!take(r, 1, &q))
		return false;
	uint8_t t = q[0];
	memset(d, 0, sizeof(*d));
	if (t <= 0x7f) {
		d->type = MP_UINT;
		d->v.u = t;
		return true;
	}
	if (t >= 0xe0) {
		d->type = MP_INT;
		d->v.i = (int8_t)t;
		return true;
	}
	if ((t & 0xf0) == 0x80) {
		d->type = MP_MAP;
		return read_items(r, o, t & 0x0f, 2, depth);
	}
	if ((t & 0xf0) == 0x90) {
		d->type = MP_ARRAY;
		return read_items(r, o, t & 0x0f, 1, depth);
	}
	if ((t & 0xe0) == 0xa0)
		return read_bytes(r, o, MP_STR, t & 0x1f);
	switch (t) {
	case 0xc0:
		d->type = MP_NIL;
		return true;
	case 0xc2:
	case 0xc3:
		d->type = MP_BOOL;
		d->v.b = t == 0xc3;
		return true;
	case 0xc4: case 0xc5: case 0xc6: {
		int w = t == 0xc4 ? 1 : t == 0xc5 ? 2 : 4;
		return take_be(r, w, &v) && read_bytes(r, o, MP_BIN, v);
	}
	case 0xc7: case 0xc8: case 0xc9: { /* ext 8/16/32: length, type byte, data */
		int w = t == 0xc7 ? 1 : t == 0xc8 ? 2 : 4;
		return take_be(r, w, &v) && take(r, 1, &q) && read_bytes(r, o, MP_EXT, v);
	}
	case 0xca: { /* float 32 */
		float f;
		uint32_t bits;
		if (!take_be(r, 4, &v))
			return false;
		bits = (uint32_t)v;
		memcpy(&f, &bits, sizeof(f));
		d->type = MP_FLOAT;
		d->v.f = f;
		return true;
	}
	case 0xcb:
		if (!take_be(r, 8, &v))
			return false;
		d->type = MP_FLOAT;
		memcpy(&d->v.f, &v, sizeof(double));
		return true;
	case 0xcc: case 0xcd: case 0xce: case 0xcf:
		if (!take_be(r, 1 << (t - 0xcc), &v))
			return false;
		d->type = MP_UINT;
		d->v.u = v;
		return true;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		int w = 1 << (t - 0xd0);
		if (!take_be(r, w, &v))
			return false;
		if (w < 8 && (v >> (8 * w - 1)) & 1) /* sign-extend */
			v |= ~0ull << (8 * w);
		int64_t s = (int64_t)v;
		if (s >= 0) {
			d->type = MP_UINT;
			d->v.u = (uint64_t)s;
		} else {
			d->type = MP_INT;
			d->v.i = s;
		}
		return true;
	}
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext 1..16 */
		return take(r, 1, &q) && read_bytes(r, o, MP_EXT, 1u << (t - 0xd4));
	case 0xd9: case 0xda: case 0xdb: {
		int w = t == 0xd9 ? 1 : t == 0xda ? 2 : 4;
		return take_be(r, w, &v) && read_bytes(r, o, MP_STR, v);
	}
	case 0xdc: case 0xdd:
		if (!take_be(r, t == 0xdc ? 2 : 4, &v))
			return false;
		d->type = MP_ARRAY;
		return read_items(r, o, v, 1, depth);
	case 0xde: case 0xdf:
		if (!take_be(r, t == 0xde ? 2 : 4, &v))
			return false;
		d->type = MP_MAP;
		return read_items(r, o, v, 2, depth);
	default: /* 0xc1 is never used */
		return false;
	}
}

int mp_decode(const uint8_t *buf, size_t len, struct mp_doc *doc)
{
	struct mp_reader r = { .p = buf, .len = len, .next = 1 };

	doc->nodes = NULL;
	doc->count = 0;
	if (!read_obj(&r, NULL, 0) || r.pos != len)
		return -EPROTO;
	doc->nodes = calloc(r.next, sizeof(*doc->nodes));
	if (!doc->nodes)
		return -ENOMEM;
	doc->count = r.next;
	r.pos = 0;
	r.next = 1;
	r.nodes = doc->nodes;
	if (!read_obj(&r, &doc->nodes[0], 0)) { /* cannot happen: the bytes were checked */
		mp_doc_free(doc);
		return -EPROTO;
	}
	return 0;
}

void mp_doc_free(struct mp_doc *doc)
{
	free(doc->nodes);
	doc->nodes = NULL;
	doc->count = 0;
}

/* --- lookups ---------------------------------------------------------------------- */

bool mp_str_eq(const struct mp_obj *o, const char *s)
{
	size_t n = strlen(s);
	return o && o->type == MP_STR && o->len == n && memcmp(o->v.s, s, n) == 0;
}

const struct mp_obj *mp_map_get(const struct mp_obj *map, const char *key)
{
	if (!map || map->type != MP_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->len; i++)
		if (mp_str_eq(&map->v.items[2 * i], key))
			return &map->v.items[2 * i + 1];
	return NULL;
}

bool mp_get_u64(const struct mp_obj *o, uint64_t *out)
{
	if (!o || o->type != MP_UINT)
		return false;
	*out = o->v.u;
	return true;
}

bool mp_get_i64(const struct mp_obj *o, int64_t *out)
{
	if (o && o->type == MP_INT) {
		*out = o->v.i;
		return true;
	}
	if (o && o->type == MP_UINT && o->v.u <= INT64_MAX) {
		*out = (int64_t)o->v.u;
		return true;
	}
	return false;
}

bool mp_get_bool(const struct mp_obj *o, bool *out)
{
	if (!o || o->type != MP_BOOL)
		return false;
	*out = o->v.b;
	return true;
}

bool mp_get_str(const struct mp_obj *o, char *dst, size_t cap)
{
	if (!o || o->type != MP_STR || cap == 0)
		return false;
	size_t n = o->len < cap - 1 ? o->len : cap - 1;
	memcpy(dst, o->v.s, n);
	dst[n] = '\0';
	return true;
}
