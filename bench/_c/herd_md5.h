/*
 * MD5 (RFC 1321), written from the RFC for herdrt's hash ring. BENCHMARK CONTENDER ONLY.
 *
 * The compiled core carried this as src/herdrt/core/_md5.h on the claim that a library MD5 costs
 * several times the hash for one short key. bench/bench_md5.py measured it against OpenSSL
 * called from Cython: MD5_Init/Update/Final ties it (EVP and hashlib are slower), so the core
 * calls those now and this file lives on only as the benchmark's hand-written contender. It is
 * not part of the package.
 *
 * A plain, allocation-free, header-only MD5 with a fast path for a key that fits in a single
 * 64-byte block (up to 55 bytes). The result is the four state words A, B, C, D; the digest is
 * those words written little-endian.
 */
#ifndef HERDRT_MD5_H
#define HERDRT_MD5_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The four auxiliary functions of RFC 1321 section 3.4, in forms with fewer operations:
 * F picks y where x is set else z; G picks x where z is set else y. */
#define HERD_MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define HERD_MD5_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define HERD_MD5_H(x, y, z) ((x) ^ (y) ^ (z))
#define HERD_MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))

#define HERD_ROTL32(v, s) (((v) << (s)) | ((v) >> (32 - (s))))

/* One operation "[abcd k s i]": a = b + ((a + f(b,c,d) + X[k] + T[i]) <<< s). */
#define HERD_MD5_OP(f, a, b, c, d, xk, s, t)      \
    do {                                          \
        (a) += (xk) + (uint32_t)(t); /* off the critical path */ \
        (a) += f((b), (c), (d));                  \
        (a) = HERD_ROTL32((a), (s));              \
        (a) += (b);                               \
    } while (0)

static inline uint32_t herd_load_le32(const unsigned char *p)
{
    /* Byte by byte so it is right on any host; compilers turn this into one load on x86/ARM. */
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Process one 64-byte block into the state (RFC 1321 section 3.4, step 4). */
static inline void herd_md5_block(uint32_t st[4], const unsigned char *block)
{
    uint32_t x[16];
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    int k;
    for (k = 0; k < 16; k++)
        x[k] = herd_load_le32(block + 4 * k);

    /* Round 1: X[k] in order, shifts 7 12 17 22; T[i] = floor(2^32 * |sin(i)|), i = 1..64. */
    HERD_MD5_OP(HERD_MD5_F, a, b, c, d, x[0], 7, 0xd76aa478);
    HERD_MD5_OP(HERD_MD5_F, d, a, b, c, x[1], 12, 0xe8c7b756);
    HERD_MD5_OP(HERD_MD5_F, c, d, a, b, x[2], 17, 0x242070db);
    HERD_MD5_OP(HERD_MD5_F, b, c, d, a, x[3], 22, 0xc1bdceee);
    HERD_MD5_OP(HERD_MD5_F, a, b, c, d, x[4], 7, 0xf57c0faf);
    HERD_MD5_OP(HERD_MD5_F, d, a, b, c, x[5], 12, 0x4787c62a);
    HERD_MD5_OP(HERD_MD5_F, c, d, a, b, x[6], 17, 0xa8304613);
    HERD_MD5_OP(HERD_MD5_F, b, c, d, a, x[7], 22, 0xfd469501);
    HERD_MD5_OP(HERD_MD5_F, a, b, c, d, x[8], 7, 0x698098d8);
    HERD_MD5_OP(HERD_MD5_F, d, a, b, c, x[9], 12, 0x8b44f7af);
    HERD_MD5_OP(HERD_MD5_F, c, d, a, b, x[10], 17, 0xffff5bb1);
    HERD_MD5_OP(HERD_MD5_F, b, c, d, a, x[11], 22, 0x895cd7be);
    HERD_MD5_OP(HERD_MD5_F, a, b, c, d, x[12], 7, 0x6b901122);
    HERD_MD5_OP(HERD_MD5_F, d, a, b, c, x[13], 12, 0xfd987193);
    HERD_MD5_OP(HERD_MD5_F, c, d, a, b, x[14], 17, 0xa679438e);
    HERD_MD5_OP(HERD_MD5_F, b, c, d, a, x[15], 22, 0x49b40821);

    /* Round 2: X[(1 + 5j) mod 16], shifts 5 9 14 20. */
    HERD_MD5_OP(HERD_MD5_G, a, b, c, d, x[1], 5, 0xf61e2562);
    HERD_MD5_OP(HERD_MD5_G, d, a, b, c, x[6], 9, 0xc040b340);
    HERD_MD5_OP(HERD_MD5_G, c, d, a, b, x[11], 14, 0x265e5a51);
    HERD_MD5_OP(HERD_MD5_G, b, c, d, a, x[0], 20, 0xe9b6c7aa);
    HERD_MD5_OP(HERD_MD5_G, a, b, c, d, x[5], 5, 0xd62f105d);
    HERD_MD5_OP(HERD_MD5_G, d, a, b, c, x[10], 9, 0x02441453);
    HERD_MD5_OP(HERD_MD5_G, c, d, a, b, x[15], 14, 0xd8a1e681);
    HERD_MD5_OP(HERD_MD5_G, b, c, d, a, x[4], 20, 0xe7d3fbc8);
    HERD_MD5_OP(HERD_MD5_G, a, b, c, d, x[9], 5, 0x21e1cde6);
    HERD_MD5_OP(HERD_MD5_G, d, a, b, c, x[14], 9, 0xc33707d6);
    HERD_MD5_OP(HERD_MD5_G, c, d, a, b, x[3], 14, 0xf4d50d87);
    HERD_MD5_OP(HERD_MD5_G, b, c, d, a, x[8], 20, 0x455a14ed);
    HERD_MD5_OP(HERD_MD5_G, a, b, c, d, x[13], 5, 0xa9e3e905);
    HERD_MD5_OP(HERD_MD5_G, d, a, b, c, x[2], 9, 0xfcefa3f8);
    HERD_MD5_OP(HERD_MD5_G, c, d, a, b, x[7], 14, 0x676f02d9);
    HERD_MD5_OP(HERD_MD5_G, b, c, d, a, x[12], 20, 0x8d2a4c8a);

    /* Round 3: X[(5 + 3j) mod 16], shifts 4 11 16 23. */
    HERD_MD5_OP(HERD_MD5_H, a, b, c, d, x[5], 4, 0xfffa3942);
    HERD_MD5_OP(HERD_MD5_H, d, a, b, c, x[8], 11, 0x8771f681);
    HERD_MD5_OP(HERD_MD5_H, c, d, a, b, x[11], 16, 0x6d9d6122);
    HERD_MD5_OP(HERD_MD5_H, b, c, d, a, x[14], 23, 0xfde5380c);
    HERD_MD5_OP(HERD_MD5_H, a, b, c, d, x[1], 4, 0xa4beea44);
    HERD_MD5_OP(HERD_MD5_H, d, a, b, c, x[4], 11, 0x4bdecfa9);
    HERD_MD5_OP(HERD_MD5_H, c, d, a, b, x[7], 16, 0xf6bb4b60);
    HERD_MD5_OP(HERD_MD5_H, b, c, d, a, x[10], 23, 0xbebfbc70);
    HERD_MD5_OP(HERD_MD5_H, a, b, c, d, x[13], 4, 0x289b7ec6);
    HERD_MD5_OP(HERD_MD5_H, d, a, b, c, x[0], 11, 0xeaa127fa);
    HERD_MD5_OP(HERD_MD5_H, c, d, a, b, x[3], 16, 0xd4ef3085);
    HERD_MD5_OP(HERD_MD5_H, b, c, d, a, x[6], 23, 0x04881d05);
    HERD_MD5_OP(HERD_MD5_H, a, b, c, d, x[9], 4, 0xd9d4d039);
    HERD_MD5_OP(HERD_MD5_H, d, a, b, c, x[12], 11, 0xe6db99e5);
    HERD_MD5_OP(HERD_MD5_H, c, d, a, b, x[15], 16, 0x1fa27cf8);
    HERD_MD5_OP(HERD_MD5_H, b, c, d, a, x[2], 23, 0xc4ac5665);

    /* Round 4: X[7j mod 16], shifts 6 10 15 21. */
    HERD_MD5_OP(HERD_MD5_I, a, b, c, d, x[0], 6, 0xf4292244);
    HERD_MD5_OP(HERD_MD5_I, d, a, b, c, x[7], 10, 0x432aff97);
    HERD_MD5_OP(HERD_MD5_I, c, d, a, b, x[14], 15, 0xab9423a7);
    HERD_MD5_OP(HERD_MD5_I, b, c, d, a, x[5], 21, 0xfc93a039);
    HERD_MD5_OP(HERD_MD5_I, a, b, c, d, x[12], 6, 0x655b59c3);
    HERD_MD5_OP(HERD_MD5_I, d, a, b, c, x[3], 10, 0x8f0ccc92);
    HERD_MD5_OP(HERD_MD5_I, c, d, a, b, x[10], 15, 0xffeff47d);
    HERD_MD5_OP(HERD_MD5_I, b, c, d, a, x[1], 21, 0x85845dd1);
    HERD_MD5_OP(HERD_MD5_I, a, b, c, d, x[8], 6, 0x6fa87e4f);
    HERD_MD5_OP(HERD_MD5_I, d, a, b, c, x[15], 10, 0xfe2ce6e0);
    HERD_MD5_OP(HERD_MD5_I, c, d, a, b, x[6], 15, 0xa3014314);
    HERD_MD5_OP(HERD_MD5_I, b, c, d, a, x[13], 21, 0x4e0811a1);
    HERD_MD5_OP(HERD_MD5_I, a, b, c, d, x[4], 6, 0xf7537e82);
    HERD_MD5_OP(HERD_MD5_I, d, a, b, c, x[11], 10, 0xbd3af235);
    HERD_MD5_OP(HERD_MD5_I, c, d, a, b, x[2], 15, 0x2ad7d2bb);
    HERD_MD5_OP(HERD_MD5_I, b, c, d, a, x[9], 21, 0xeb86d391);

    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
}

/* MD5 of data[0:len]; the digest is out[0..3], each word little-endian. */
static inline void herd_md5(const void *data, size_t len, uint32_t out[4])
{
    const unsigned char *p = (const unsigned char *)data;
    unsigned char tail[128];
    size_t rest, padded;
    uint64_t bits = (uint64_t)len << 3; /* the message length in bits, mod 2^64 (step 2) */
    int k;

    /* Initial state (step 3): the words 01 23 45 67 / 89 ab cd ef / fe dc ba 98 / 76 54 32 10. */
    out[0] = 0x67452301u;
    out[1] = 0xefcdab89u;
    out[2] = 0x98badcfeu;
    out[3] = 0x10325476u;

    /* Whole blocks straight from the input; the last partial block goes through `tail`. */
    while (len >= 64) {
        herd_md5_block(out, p);
        p += 64;
        len -= 64;
    }
    rest = len;

    /* Padding (step 1): one 0x80 byte, zeros up to 56 mod 64, then the 64-bit length (LE).
     * Up to 55 bytes of tail fit one block (the fast path for short keys); 56..63 need two. */
    padded = rest < 56 ? 64 : 128;
    if (rest)
        memcpy(tail, p, rest);
    tail[rest] = 0x80;
    memset(tail + rest + 1, 0, padded - 8 - rest - 1);
    for (k = 0; k < 8; k++)
        tail[padded - 8 + k] = (unsigned char)(bits >> (8 * k));
    herd_md5_block(out, tail);
    if (padded == 128)
        herd_md5_block(out, tail + 64);
}

#endif /* HERDRT_MD5_H */
