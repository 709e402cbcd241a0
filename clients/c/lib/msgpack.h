/* SPDX-License-Identifier: MIT */
/*
 * A minimal msgpack codec for the wire protocol: maps with string keys, arrays,
 * strings, integers, nil, bool and floats. Encoding appends to a growable buffer;
 * decoding builds a small tree whose strings point into the decoded buffer.
 */
#ifndef IOPF_MSGPACK_H
#define IOPF_MSGPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Nesting deeper than this is refused: no frame of the protocol comes close. */
#define MP_MAX_DEPTH 32

struct mp_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	bool oom; /* an append failed; the buffer is unusable */
};

void mp_buf_init(struct mp_buf *b);
void mp_buf_free(struct mp_buf *b);
void mp_put_raw(struct mp_buf *b, const void *p, size_t n);
void mp_put_nil(struct mp_buf *b);
void mp_put_bool(struct mp_buf *b, bool v);
void mp_put_uint(struct mp_buf *b, uint64_t v);
void mp_put_int(struct mp_buf *b, int64_t v);
void mp_put_double(struct mp_buf *b, double v);
void mp_put_strn(struct mp_buf *b, const char *s, size_t n);
void mp_put_str(struct mp_buf *b, const char *s);
void mp_put_array(struct mp_buf *b, uint32_t n);
void mp_put_map(struct mp_buf *b, uint32_t n);

enum mp_type { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT };

struct mp_obj {
	enum mp_type type;
	uint32_t len; /* bytes of a str/bin/ext, items of an array, pairs of a map */
	union {
		bool b;
		uint64_t u; /* MP_UINT */
		int64_t i;  /* MP_INT: negative values only */
		double f;
		const char *s;             /* MP_STR, MP_BIN, MP_EXT: not NUL-terminated */
		const struct mp_obj *items; /* array: len items; map: 2*len (key, value) */
	} v;
};

struct mp_doc {
	struct mp_obj *nodes;
	size_t count;
};

/* Decodes exactly one object filling buf[0..len): 0, -EPROTO (malformed, trailing
 * bytes, too deep) or -ENOMEM. The tree's strings point into buf. */
int mp_decode(const uint8_t *buf, size_t len, struct mp_doc *doc);
void mp_doc_free(struct mp_doc *doc);
static inline const struct mp_obj *mp_root(const struct mp_doc *doc)
{
	return doc->count ? &doc->nodes[0] : NULL;
}

/* Lookups; each tolerates a NULL or mistyped argument and then fails. */
const struct mp_obj *mp_map_get(const struct mp_obj *map, const char *key);
bool mp_str_eq(const struct mp_obj *o, const char *s);
bool mp_get_u64(const struct mp_obj *o, uint64_t *out); /* a non-negative integer */
bool mp_get_i64(const struct mp_obj *o, int64_t *out);
bool mp_get_bool(const struct mp_obj *o, bool *out);
/* Copies a string into dst (NUL-terminated, truncated to cap - 1); false if not a str. */
bool mp_get_str(const struct mp_obj *o, char *dst, size_t cap);

#endif /* IOPF_MSGPACK_H */
