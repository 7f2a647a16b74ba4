//! Content-defined chunks (FastCDC): an insert or a change in a file
//! moves only the chunks around it, so the rest deduplicates.

use std::io::Read;

use crate::BackupError;

/// Minimum, average and maximum chunk sizes (restic's average is 1 MiB).
pub(crate) const SIZES: (u32, u32, u32) = (256 << 10, 1 << 20, 8 << 20);

/// Calls `each` with every chunk of `r`, in order.
pub(crate) fn chunks(
    r: impl Read,
    sizes: (u32, u32, u32),
    mut each: impl FnMut(&[u8]) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let cdc = fastcdc::v2020::StreamCDC::new(r, sizes.0, sizes.1, sizes.2);
    for c in cdc {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => BackupError::Io(e),
            e => BackupError::Io(std::io::Error::other(e.to_string())),
        })?;
        each(&c.data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(data: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        chunks(data, (4096, 16384, 65536), |c| {
            v.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn a_change_moves_only_nearby_chunks() {
        let mut data: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let before = all(&data);
        assert_eq!(before.concat(), data);
        data.splice(500_000..500_000, b"an insertion".iter().copied());
        let after = all(&data);
        assert_eq!(after.concat(), data);
        let same = after.iter().filter(|c| before.contains(c)).count();
        assert!(same + 3 >= after.len(), "{same} of {} kept", after.len());
        assert!(all(b"").is_empty());
    }
}
