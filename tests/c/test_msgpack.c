// SPDX-License-Identifier: MIT
/* The library's msgpack codec on its own: no daemon. */
#include "ctest.h"

#include "../../clients/c/lib/msgpack.h"

static const struct mp_obj *decode(struct mp_buf *b, struct mp_doc *doc)
{
	ASSERT_TRUE(!b->oom);
	ASSERT_OK(mp_decode(b->data, b->len, doc));
	return mp_root(doc);
}

TEST(msgpack_integers_round_trip_at_every_width)
{
	static const uint64_t values[] = { 0, 1, 127, 128, 255, 256, 65535, 65536,
					   UINT32_MAX, (uint64_t)UINT32_MAX + 1, UINT64_MAX };
	static const int64_t negatives[] = { -1, -32, -33, -128, -129, -32768, -32769,
					     INT32_MIN, (int64_t)INT32_MIN - 1, INT64_MIN };

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		struct mp_buf b;
		struct mp_doc doc;
		uint64_t v;
		mp_buf_init(&b);
		mp_put_uint(&b, values[i]);
		ASSERT_TRUE(mp_get_u64(decode(&b, &doc), &v));
		ASSERT_EQ(v, values[i]);
		mp_doc_free(&doc);
		mp_buf_free(&b);
	}
	for (size_t i = 0; i < sizeof(negatives) / sizeof(negatives[0]); i++) {
		struct mp_buf b;
		struct mp_doc doc;
		int64_t v;
		mp_buf_init(&b);
		mp_put_int(&b, negatives[i]);
		ASSERT_TRUE(mp_get_i64(decode(&b, &doc), &v));
		ASSERT_EQ(v, negatives[i]);
		mp_doc_free(&doc);
		mp_buf_free(&b);
	}
}

TEST(msgpack_maps_arrays_strings_nil_bool_float)
{
	struct mp_buf b;
	struct mp_doc doc;
	const struct mp_obj *root, *arr;
	char s[64];
	bool flag = false;
	char long_str[300];

	memset(long_str, 'x', sizeof(long_str) - 1);
	long_str[sizeof(long_str) - 1] = '\0';
	mp_buf_init(&b);
	mp_put_map(&b, 5);
	mp_put_str(&b, "op");
	mp_put_str(&b, "hello");
	mp_put_str(&b, "list");
	mp_put_array(&b, 20);
	for (int i = 0; i < 20; i++)
		mp_put_uint(&b, (uint64_t)i * 1000);
	mp_put_str(&b, "none");
	mp_put_nil(&b);
	mp_put_str(&b, "yes");
	mp_put_bool(&b, true);
	mp_put_str(&b, "long");
	mp_put_str(&b, long_str);
	root = decode(&b, &doc);
	ASSERT_EQ(root->type, MP_MAP);
	ASSERT_TRUE(mp_get_str(mp_map_get(root, "op"), s, sizeof(s)));
	ASSERT_EQ(strcmp(s, "hello"), 0);
	arr = mp_map_get(root, "list");
	ASSERT_EQ(arr->type, MP_ARRAY);
	ASSERT_EQ(arr->len, 20);
	ASSERT_EQ(arr->v.items[19].v.u, 19000);
	ASSERT_EQ(mp_map_get(root, "none")->type, MP_NIL);
	ASSERT_TRUE(mp_get_bool(mp_map_get(root, "yes"), &flag) && flag);
	ASSERT_EQ(mp_map_get(root, "long")->len, 299);
	ASSERT_TRUE(mp_map_get(root, "missing") == NULL);
	mp_doc_free(&doc);
	mp_buf_free(&b);

	/* float 64 and float 32 (0xca 0x3f800000 is 1.0) */
	static const uint8_t f32[] = { 0xca, 0x3f, 0x80, 0x00, 0x00 };
	ASSERT_OK(mp_decode(f32, sizeof(f32), &doc));
	ASSERT_EQ(mp_root(&doc)->type, MP_FLOAT);
	ASSERT_TRUE(mp_root(&doc)->v.f == 1.0);
	mp_doc_free(&doc);
	mp_buf_init(&b);
	mp_put_double(&b, 2.5);
	ASSERT_TRUE(decode(&b, &doc)->v.f == 2.5);
	mp_doc_free(&doc);
	mp_buf_free(&b);
}

TEST(msgpack_rejects_truncated_trailing_and_non_string_keys)
{
	struct mp_buf b;
	struct mp_doc doc;

	mp_buf_init(&b);
	mp_put_map(&b, 1);
	mp_put_str(&b, "key");
	mp_put_uint(&b, 1 << 20);
	for (size_t cut = 0; cut < b.len; cut++)
		ASSERT_EQ(mp_decode(b.data, cut, &doc), -EPROTO);
	mp_put_uint(&b, 1); /* a second object after the first */
	ASSERT_EQ(mp_decode(b.data, b.len, &doc), -EPROTO);
	mp_buf_free(&b);

	static const uint8_t int_key[] = { 0x81, 0x01, 0x02 };
	ASSERT_EQ(mp_decode(int_key, sizeof(int_key), &doc), -EPROTO);
	static const uint8_t never_used[] = { 0xc1 };
	ASSERT_EQ(mp_decode(never_used, sizeof(never_used), &doc), -EPROTO);
	/* a 4-billion-entry array in 5 bytes must not allocate anything */
	static const uint8_t huge[] = { 0xdd, 0xff, 0xff, 0xff, 0xff };
	ASSERT_EQ(mp_decode(huge, sizeof(huge), &doc), -EPROTO);
}

TEST(msgpack_refuses_nesting_deeper_than_its_bound)
{
	uint8_t deep[MP_MAX_DEPTH + 2];
	struct mp_doc doc;

	memset(deep, 0x91, sizeof(deep)); /* [[[[...]]]] */
	deep[sizeof(deep) - 1] = 0xc0;
	ASSERT_EQ(mp_decode(deep, sizeof(deep), &doc), -EPROTO);
	ASSERT_OK(mp_decode(deep + 3, sizeof(deep) - 3, &doc));
	mp_doc_free(&doc);
}
