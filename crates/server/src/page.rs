//! The chat page served on `GET /`.
//!
//! `assets/index.html` links `style.css` and `app.js` like a normal page. At
//! compile time (const evaluation, no build script) the two tags are replaced
//! by inline `<style>` and `<script>` blocks, giving one self-contained
//! document: no further requests, no CDN, works offline.
//!
//! The page's Content-Security-Policy allows exactly those two inline blocks,
//! by their SHA-256 hashes (also computed at compile time and substituted for
//! `@JS_SHA256@` / `@CSS_SHA256@`). Even if user text ever reached the DOM as
//! HTML, an injected `<script>` or `onerror=` handler would not run. (The
//! script never does that: it only uses `textContent`.)

const HTML: &str = include_str!("../assets/index.html");
const CSS: &str = include_str!("../assets/style.css");
const JS: &str = include_str!("../assets/app.js");

/// Content-Type to serve [`INDEX_HTML`] with.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The complete page.
pub const INDEX_HTML: &str = match std::str::from_utf8(&SPLICED) {
    Ok(s) => s,
    Err(_) => panic!("index.html is not UTF-8"),
};

/// One text substitution: `needle` (which must occur exactly once in
/// index.html) is replaced by the concatenation of `parts`.
struct Sub {
    needle: &'static [u8],
    parts: [&'static [u8]; 3],
}

const JS_HASH: [u8; 44] = base64_32(&sha256(JS.as_bytes()));
const CSS_HASH: [u8; 44] = base64_32(&sha256(CSS.as_bytes()));

const SUBS: [Sub; 4] = [
    Sub {
        needle: br#"<link rel="stylesheet" href="style.css">"#,
        parts: [b"<style>", CSS.as_bytes(), b"</style>"],
    },
    Sub {
        needle: br#"<script src="app.js"></script>"#,
        parts: [b"<script>", JS.as_bytes(), b"</script>"],
    },
    Sub {
        needle: b"@CSS_SHA256@",
        parts: [&CSS_HASH, b"", b""],
    },
    Sub {
        needle: b"@JS_SHA256@",
        parts: [&JS_HASH, b"", b""],
    },
];

const LEN: usize = spliced_len();

// A `const`, not a `static`: a const borrowing a static makes clippy (with
// rustc 1.95) hit an internal compiler error where INDEX_HTML is used. The
// array is only borrowed once, by INDEX_HTML, so it exists once in the binary.
#[allow(clippy::large_const_arrays)]
const SPLICED: [u8; LEN] = splice();

const fn spliced_len() -> usize {
    let mut len = HTML.len();
    let mut i = 0;
    while i < SUBS.len() {
        len -= SUBS[i].needle.len();
        let mut p = 0;
        while p < SUBS[i].parts.len() {
            len += SUBS[i].parts[p].len();
            p += 1;
        }
        i += 1;
    }
    len
}

/// Position of `needle` in `hay`; a compile error when absent or repeated.
const fn find_once(hay: &[u8], needle: &[u8]) -> usize {
    let mut found = usize::MAX;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let mut j = 0;
        while j < needle.len() && hay[i + j] == needle[j] {
            j += 1;
        }
        if j == needle.len() {
            assert!(
                found == usize::MAX,
                "a placeholder appears twice in index.html"
            );
            found = i;
        }
        i += 1;
    }
    assert!(
        found != usize::MAX,
        "a placeholder is missing from index.html"
    );
    found
}

/// Compile error if `body` contains `needle` (ASCII case-insensitive): a
/// `</script` inside app.js would end the inline script early.
const fn assert_absent_ci(body: &[u8], needle: &[u8]) {
    let mut i = 0;
    while i + needle.len() <= body.len() {
        let mut j = 0;
        while j < needle.len() && body[i + j].to_ascii_lowercase() == needle[j] {
            j += 1;
        }
        assert!(
            j != needle.len(),
            "an asset contains a closing tag that would end its inline block"
        );
        i += 1;
    }
}

const fn splice() -> [u8; LEN] {
    assert_absent_ci(JS.as_bytes(), b"</script");
    assert_absent_ci(CSS.as_bytes(), b"</style");
    let html = HTML.as_bytes();
    let mut at_pos = [0usize; SUBS.len()];
    let mut s = 0;
    while s < SUBS.len() {
        at_pos[s] = find_once(html, SUBS[s].needle);
        s += 1;
    }

    let mut out = [0u8; LEN];
    let mut at = 0;
    let mut i = 0;
    'outer: while i < html.len() {
        let mut s = 0;
        while s < SUBS.len() {
            if at_pos[s] == i {
                let mut p = 0;
                while p < SUBS[s].parts.len() {
                    let part = SUBS[s].parts[p];
                    let mut k = 0;
                    while k < part.len() {
                        out[at] = part[k];
                        at += 1;
                        k += 1;
                    }
                    p += 1;
                }
                i += SUBS[s].needle.len();
                continue 'outer;
            }
            s += 1;
        }
        out[at] = html[i];
        at += 1;
        i += 1;
    }
    assert!(at == LEN, "placeholders overlap");
    out
}

// ---- SHA-256 (FIPS 180-4) and base64, as const fns for the CSP hashes ----

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Byte `idx` of the padded message: data, 0x80, zeros, 64-bit bit length.
const fn padded_byte(data: &[u8], idx: usize, total: usize) -> u8 {
    if idx < data.len() {
        data[idx]
    } else if idx == data.len() {
        0x80
    } else if idx >= total - 8 {
        let bits = (data.len() as u64).wrapping_mul(8);
        (bits >> (8 * (total - 1 - idx))) as u8
    } else {
        0
    }
}

const fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let total = (data.len() + 9).div_ceil(64) * 64;
    let mut block = 0;
    while block * 64 < total {
        let mut w = [0u32; 64];
        let mut t = 0;
        while t < 16 {
            let base = block * 64 + t * 4;
            w[t] = (padded_byte(data, base, total) as u32) << 24
                | (padded_byte(data, base + 1, total) as u32) << 16
                | (padded_byte(data, base + 2, total) as u32) << 8
                | padded_byte(data, base + 3, total) as u32;
            t += 1;
        }
        while t < 64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16]
                .wrapping_add(s0)
                .wrapping_add(w[t - 7])
                .wrapping_add(s1);
            t += 1;
        }
        let (mut a, mut b, mut c, mut d) = (h[0], h[1], h[2], h[3]);
        let (mut e, mut f, mut g, mut hh) = (h[4], h[5], h[6], h[7]);
        t = 0;
        while t < 64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[t])
                .wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
            t += 1;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
        h[5] = h[5].wrapping_add(f);
        h[6] = h[6].wrapping_add(g);
        h[7] = h[7].wrapping_add(hh);
        block += 1;
    }
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 8 {
        let bytes = h[i].to_be_bytes();
        out[i * 4] = bytes[0];
        out[i * 4 + 1] = bytes[1];
        out[i * 4 + 2] = bytes[2];
        out[i * 4 + 3] = bytes[3];
        i += 1;
    }
    out
}

/// Standard base64 (with padding) of 32 bytes: 44 characters.
const fn base64_32(bytes: &[u8; 32]) -> [u8; 44] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = [b'='; 44];
    let mut i = 0;
    let mut o = 0;
    while i < 32 {
        let b0 = bytes[i] as u32;
        let b1 = if i + 1 < 32 { bytes[i + 1] as u32 } else { 0 };
        let b2 = if i + 2 < 32 { bytes[i + 2] as u32 } else { 0 };
        let n = (b0 << 16) | (b1 << 8) | b2;
        out[o] = ALPHABET[(n >> 18) as usize & 63];
        out[o + 1] = ALPHABET[(n >> 12) as usize & 63];
        if i + 1 < 32 {
            out[o + 2] = ALPHABET[(n >> 6) as usize & 63];
        }
        if i + 2 < 32 {
            out[o + 3] = ALPHABET[n as usize & 63];
        }
        i += 3;
        o += 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // 55, 56 and 64 bytes: the padding edge cases.
        assert_eq!(
            hex(&sha256(&[b'a'; 55])),
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"
        );
        assert_eq!(
            hex(&sha256(&[b'a'; 56])),
            "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"
        );
        assert_eq!(
            hex(&sha256(&[b'a'; 64])),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"
        );
    }

    #[test]
    fn base64_of_hash() {
        // The well-known CSP hash of an empty inline script.
        assert_eq!(
            &base64_32(&sha256(b"")),
            b"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn page_is_self_contained() {
        assert!(INDEX_HTML.starts_with("<!doctype html>"));
        assert!(INDEX_HTML.contains(&format!("<script>{JS}</script>")));
        assert!(INDEX_HTML.contains(&format!("<style>{CSS}</style>")));
        assert!(!INDEX_HTML.contains("href=\"style.css\""));
        assert!(!INDEX_HTML.contains("src=\"app.js\""));
        assert!(!INDEX_HTML.contains("_SHA256@"));
        // No external resources: nothing is fetched from anywhere.
        for bad in ["http://", "https://", "src=\"", "@import", "url("] {
            assert!(
                !INDEX_HTML.contains(bad),
                "page references an external resource: {bad}"
            );
        }
        assert!(INDEX_HTML.contains("name=\"viewport\""));
    }

    #[test]
    fn csp_pins_the_inline_blocks() {
        let js = String::from_utf8(base64_32(&sha256(JS.as_bytes())).to_vec()).unwrap();
        let css = String::from_utf8(base64_32(&sha256(CSS.as_bytes())).to_vec()).unwrap();
        assert!(INDEX_HTML.contains(&format!("script-src 'sha256-{js}'")));
        assert!(INDEX_HTML.contains(&format!("style-src 'sha256-{css}'")));
        assert!(!INDEX_HTML.contains("unsafe-inline"));
    }

    #[test]
    fn script_never_uses_html_sinks() {
        // User data must go through textContent; keep the HTML sinks out entirely.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!JS.contains(sink), "app.js uses {sink}");
        }
    }
}
