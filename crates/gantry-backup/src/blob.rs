//! A blob's bytes before sealing: a tag, then the data, compressed with
//! zstd when that makes it smaller.

use crate::BackupError;

const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// zstd's level: fast (a backup is read once, and written often).
const LEVEL: i32 = 1;

/// `plain`, ready to seal.
pub(crate) fn encode(plain: &[u8]) -> Vec<u8> {
    if let Ok(z) = zstd::bulk::compress(plain, LEVEL) {
        if z.len() + 64 < plain.len() {
            let mut out = Vec::with_capacity(z.len() + 1);
            out.push(ZSTD);
            out.extend_from_slice(&z);
            return out;
        }
    }
    let mut out = Vec::with_capacity(plain.len() + 1);
    out.push(RAW);
    out.extend_from_slice(plain);
    out
}

/// What [`encode`] made, back.
pub(crate) fn decode(b: &[u8]) -> Result<Vec<u8>, BackupError> {
    match b.split_first() {
        Some((&RAW, rest)) => Ok(rest.to_vec()),
        Some((&ZSTD, rest)) => zstd::stream::decode_all(rest)
            .map_err(|e| BackupError::Corrupt(format!("a blob does not decompress: {e}"))),
        _ => Err(BackupError::Corrupt("a blob of an unknown kind".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_compressed_when_it_helps() {
        let text = b"the same words again and again ".repeat(200);
        let e = encode(&text);
        assert_eq!(e[0], ZSTD);
        assert!(e.len() < text.len() / 4);
        assert_eq!(decode(&e).unwrap(), text);
        let noise: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
        let e = encode(&noise);
        assert_eq!(e[0], RAW);
        assert_eq!(decode(&e).unwrap(), noise);
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
        assert!(decode(&[7, 1, 2]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[ZSTD, 1, 2, 3]).is_err());
    }
}
