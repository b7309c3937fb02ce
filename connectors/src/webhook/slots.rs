//! A tiny durable record of `N` integers, rewritten in place.
//!
//! The file holds two slots of `8 × (N + 2)` bytes: a generation, the `N`
//! values and an xxh3 checksum of both. Each write goes to the slot the
//! generation selects (`generation % 2`), so the other slot keeps the
//! previous record intact: a write torn by a crash leaves one slot whose
//! checksum fails, and [`SlotFile::open`] returns the valid slot with the
//! highest generation. A record is durable once a write with `sync` returns.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

/// A two-slot record file holding `N` `u64` values.
#[derive(Debug)]
pub(crate) struct SlotFile<const N: usize> {
    file: File,
    generation: u64,
}

impl<const N: usize> SlotFile<N> {
    const SLOT_BYTES: usize = 8 * (N + 2);

    /// Opens (or creates) the file and reads its newest valid record.
    pub(crate) fn open(path: &Path) -> io::Result<(Self, Option<[u64; N]>)> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            sync_parent(path)?;
        }
        let mut newest: Option<(u64, [u64; N])> = None;
        for slot in 0..2 {
            let Some((generation, values)) = read_slot::<N>(&file, slot)? else {
                continue;
            };
            if newest.is_none_or(|(g, _)| generation > g) {
                newest = Some((generation, values));
            }
        }
        let generation = newest.map_or(0, |(g, _)| g);
        Ok((SlotFile { file, generation }, newest.map(|(_, v)| v)))
    }

    /// Writes a new record; with `sync`, returns once it is durable.
    pub(crate) fn write(&mut self, values: &[u64; N], sync: bool) -> io::Result<()> {
        self.generation += 1;
        let mut buf = Vec::with_capacity(Self::SLOT_BYTES);
        buf.extend_from_slice(&self.generation.to_le_bytes());
        for v in values {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        let check = xxh3_64(&buf);
        buf.extend_from_slice(&check.to_le_bytes());
        let slot = self.generation % 2;
        self.file
            .write_all_at(&buf, slot * Self::SLOT_BYTES as u64)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Makes the last record durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Reads one slot: `None` if it is empty, short or fails its checksum.
fn read_slot<const N: usize>(file: &File, slot: u64) -> io::Result<Option<(u64, [u64; N])>> {
    let len = 8 * (N + 2);
    let mut buf = vec![0u8; len];
    match file.read_exact_at(&mut buf, slot * len as u64) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let word = |i: usize| u64::from_le_bytes(buf[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    if word(N + 1) != xxh3_64(&buf[..8 * (N + 1)]) || word(0) == 0 {
        return Ok(None);
    }
    let mut values = [0u64; N];
    for (i, v) in values.iter_mut().enumerate() {
        *v = word(i + 1);
    }
    Ok(Some((word(0), values)))
}

/// Makes a new directory entry under `path`'s parent durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        let (mut f, none) = SlotFile::<2>::open(&path).unwrap();
        assert_eq!(none, None);
        f.write(&[1, 2], true).unwrap();
        f.write(&[3, 4], true).unwrap();
        drop(f);
        let (mut f, got) = SlotFile::<2>::open(&path).unwrap();
        assert_eq!(got, Some([3, 4]));
        f.write(&[5, 6], false).unwrap();
        drop(f);
        // Tear the newest slot (generation 3 lives in slot 1): the previous record survives.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 3], 32 + 10).unwrap();
        let (_, got) = SlotFile::<2>::open(&path).unwrap();
        assert_eq!(got, Some([3, 4]));
    }
}
