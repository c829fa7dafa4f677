//! Content digests: validation of `sha256:<hex>` strings (they become file names, so a
//! hostile digest must never reach a path unchecked) and hashing readers/writers.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// The only algorithm accepted. OCI also allows sha512, which no registry or tool emits in
/// practice; refusing it keeps one code path.
pub const SHA256_PREFIX: &str = "sha256:";

/// Returns the 64 lower-case hex digits of a valid `sha256:<hex>` digest, or `None`.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix(SHA256_PREFIX).filter(|h| is_hex64(h))
}

/// True when `s` is exactly 64 lower-case hex digits.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// `sha256:<hex>` of a byte slice.
pub fn sha256_of(bytes: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex::encode(Sha256::digest(bytes)))
}

/// Short form for messages and logs: `sha256:0123456789ab`.
pub fn short(digest: &str) -> &str {
    digest.get(..SHA256_PREFIX.len() + 12).unwrap_or(digest)
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream, then returns (`sha256:<hex>`, bytes read in total).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.digest_so_far())
    }

    /// The digest and count of what was read so far, without reading on.
    pub fn digest_so_far(&self) -> (String, u64) {
        let digest = format!(
            "{SHA256_PREFIX}{}",
            hex::encode(self.hasher.clone().finalize())
        );
        (digest, self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("{SHA256_PREFIX}{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_with_64_lower_hex_is_a_digest() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert!(sha256_hex(&good).is_some());
        assert!(sha256_hex(&format!("sha256:{}", "A1".repeat(32))).is_none());
        assert!(sha256_hex("sha256:../../etc/passwd").is_none());
        assert!(sha256_hex(&format!("sha512:{}", "a1".repeat(32))).is_none());
        assert!(sha256_hex(&format!("sha256:{}", "a1".repeat(31))).is_none());
    }

    #[test]
    fn hashing_reader_matches_one_shot_digest() {
        let data = b"hello pitwall".repeat(1000);
        let r = HashingReader::new(&data[..]);
        let (d, n) = r.finish().expect("read");
        assert_eq!(d, sha256_of(&data));
        assert_eq!(n, data.len() as u64);
    }
}
