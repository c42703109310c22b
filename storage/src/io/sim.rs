//! A simulated disk for tests: in memory, deterministic from a seed, and
//! hostile on request.
//!
//! It keeps, per file, what reads see now and what would survive a crash.
//! Writes and size changes become durable on `sync_data`; names become
//! durable on `sync_dir`. [`SimFileSystem::crash`] returns the disk as a
//! reboot would find it: durable state plus a random subset of the writes
//! since the last sync, each possibly torn at sector granularity, possibly
//! with flipped bits in the bytes a torn sector was changing. Sectors are
//! atomic: bytes rewritten with their old value survive, which is what lets
//! the log rewrite its partial last page. Faults injected while running:
//! short writes, EIO on write, read and sync, and ENOSPC past a capacity.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::{ALIGN, FileSystem, IoBuffer, StorageFile};

/// Sector size: the unit in which a crash may persist part of a write.
pub const SECTOR_BYTES: usize = 512;

/// Fault rates, each in parts per million of operations.
#[derive(Debug, Clone, Default)]
pub struct SimFaults {
    pub short_write_ppm: u32,
    pub write_eio_ppm: u32,
    pub read_eio_ppm: u32,
    pub sync_eio_ppm: u32,
    /// Flip bits in a torn sector when [`SimFileSystem::crash`] tears a write.
    pub torn_garbage: bool,
    /// Writes and syncs that first yield to other tasks, as real I/O does
    /// while the device works: concurrent callers then interleave.
    pub yield_ppm: u32,
    /// How many times such a write or sync yields: from 1 to this many
    /// (0 counts as 1), so that some take long while others pass them.
    pub yields_max: u32,
}

/// SplitMix64: small, fast, and enough for reproducible fault schedules.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { pos: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
}

impl Inode {
    fn apply(target: &mut Vec<u8>, op: &PendingOp) {
        match op {
            PendingOp::Write { pos, bytes } => {
                let end = *pos as usize + bytes.len();
                if target.len() < end {
                    target.resize(end, 0);
                }
                target[*pos as usize..end].copy_from_slice(bytes);
            }
            PendingOp::SetLen(len) => target.resize(*len as usize, 0),
        }
    }
}

type InodeId = u64;

#[derive(Debug)]
struct SimState {
    rng: SimRng,
    faults: SimFaults,
    capacity_bytes: Option<u64>,
    names: BTreeMap<PathBuf, InodeId>,
    durable_names: BTreeMap<PathBuf, InodeId>,
    inodes: HashMap<InodeId, Inode>,
    next_inode: InodeId,
    /// Faults injected, for tests that want to see faults happened.
    faults_injected: u64,
    /// Bytes returned by reads, for tests that bound recovery's work.
    bytes_read: u64,
}

impl SimState {
    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.data.len() as u64).sum()
    }

    fn inode(&mut self, id: InodeId) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file was removed"))
    }

    /// ENOSPC when growing `id` to `new_len` would pass the capacity.
    fn check_space(&self, id: InodeId, new_len: u64) -> io::Result<()> {
        let Some(capacity) = self.capacity_bytes else {
            return Ok(());
        };
        let current = self.inodes.get(&id).map_or(0, |i| i.data.len() as u64);
        if new_len > current && self.used_bytes() + (new_len - current) > capacity {
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        Ok(())
    }

    fn eio(&mut self) -> io::Error {
        self.faults_injected += 1;
        io::Error::from_raw_os_error(libc_eio())
    }
}

fn libc_enospc() -> i32 {
    28
}

fn libc_eio() -> i32 {
    5
}

/// A simulated disk. Clones share the same disk.
#[derive(Clone, Debug)]
pub struct SimFileSystem {
    state: Rc<RefCell<SimState>>,
}

impl SimFileSystem {
    pub fn new(seed: u64, faults: SimFaults) -> SimFileSystem {
        SimFileSystem {
            state: Rc::new(RefCell::new(SimState {
                rng: SimRng::new(seed),
                faults,
                capacity_bytes: None,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                inodes: HashMap::new(),
                next_inode: 1,
                faults_injected: 0,
                bytes_read: 0,
            })),
        }
    }

    /// A well-behaved disk: no injected faults.
    pub fn reliable(seed: u64) -> SimFileSystem {
        SimFileSystem::new(seed, SimFaults::default())
    }

    /// Space limit in bytes of file data; `None` is unlimited.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.state.borrow_mut().capacity_bytes = capacity_bytes;
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.state.borrow_mut().faults = faults;
    }

    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    pub fn faults_injected(&self) -> u64 {
        self.state.borrow().faults_injected
    }

    pub fn bytes_read(&self) -> u64 {
        self.state.borrow().bytes_read
    }

    /// The disk as found after power loss: durable names and data, plus a
    /// random subset of unsynced writes, torn at sector boundaries.
    pub fn crash(&self) -> SimFileSystem {
        let mut st = self.state.borrow_mut();
        let durable_names = st.durable_names.clone();
        let torn_garbage = st.faults.torn_garbage;
        let mut inodes = HashMap::new();
        let ids: Vec<InodeId> = durable_names.values().copied().collect();
        for id in ids {
            if inodes.contains_key(&id) {
                continue;
            }
            let Some(inode) = st.inodes.get(&id).cloned() else {
                continue;
            };
            let mut image = inode.durable.clone();
            for op in &inode.pending {
                match st.rng.below(3) {
                    0 => {} // lost
                    1 => Inode::apply(&mut image, op),
                    _ => match op {
                        PendingOp::Write { pos, bytes } => {
                            // Torn: a random subset of its sectors persisted.
                            for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                                if st.rng.below(2) == 0 {
                                    continue;
                                }
                                let at = *pos as usize + i * SECTOR_BYTES;
                                let mut sector = sector.to_vec();
                                if torn_garbage && st.rng.below(4) == 0 {
                                    // Garbage lands in the bytes this write
                                    // changes. Bytes it rewrites with their
                                    // old value stay intact: sectors are
                                    // assumed atomic (old or new), as WALs on
                                    // real devices assume.
                                    let changed: Vec<usize> = (0..sector.len())
                                        .filter(|&j| image.get(at + j) != Some(&sector[j]))
                                        .collect();
                                    if !changed.is_empty() {
                                        let j = changed[st.rng.below(changed.len() as u64) as usize];
                                        sector[j] ^= 1 << st.rng.below(8);
                                    }
                                }
                                Inode::apply(
                                    &mut image,
                                    &PendingOp::Write {
                                        pos: at as u64,
                                        bytes: sector,
                                    },
                                );
                            }
                        }
                        PendingOp::SetLen(_) => {}
                    },
                }
            }
            inodes.insert(
                id,
                Inode {
                    data: image.clone(),
                    durable: image,
                    pending: Vec::new(),
                },
            );
        }
        let seed = st.rng.next_u64();
        SimFileSystem {
            state: Rc::new(RefCell::new(SimState {
                rng: SimRng::new(seed),
                faults: st.faults.clone(),
                capacity_bytes: st.capacity_bytes,
                names: durable_names.clone(),
                durable_names,
                inodes,
                next_inode: st.next_inode,
                faults_injected: 0,
                bytes_read: 0,
            })),
        }
    }

    /// Flips one bit of durable and current data: media corruption.
    pub fn flip_bit(&self, path: &Path, pos: u64, bit: u8) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        let id = *st
            .names
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        let inode = st.inode(id)?;
        let p = pos as usize;
        if p >= inode.data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "past the end"));
        }
        inode.data[p] ^= 1 << bit;
        if p < inode.durable.len() {
            inode.durable[p] ^= 1 << bit;
        }
        Ok(())
    }

    /// The current contents of a file, for assertions.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.borrow();
        let id = st.names.get(path)?;
        st.inodes.get(id).map(|i| i.data.clone())
    }

    pub fn file_names(&self) -> Vec<PathBuf> {
        self.state.borrow().names.keys().cloned().collect()
    }
}

fn children<'a>(
    names: &'a BTreeMap<PathBuf, InodeId>,
    dir: &'a Path,
) -> impl Iterator<Item = (&'a PathBuf, &'a InodeId)> {
    names.iter().filter(move |(p, _)| p.parent() == Some(dir))
}

impl FileSystem for SimFileSystem {
    type File = SimFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut st = self.state.borrow_mut();
        let id = match st.names.get(path) {
            Some(id) => *id,
            None if create => {
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))),
        };
        Ok(SimFile { fs: self.clone(), id })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        let id = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", from.display())))?;
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    async fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        // Directories are implied by the names of the files in them.
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        let current: Vec<(PathBuf, InodeId)> = children(&st.names, dir).map(|(p, i)| (p.clone(), *i)).collect();
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        st.durable_names.extend(current);
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.borrow();
        Ok(children(&st.names, dir)
            .filter_map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.names.retain(|p, _| !p.starts_with(dir));
        // A recursive removal is made durable by the caller syncing the
        // parent; model it as immediate, which is what tests rely on.
        st.durable_names.retain(|p, _| !p.starts_with(dir));
        Ok(())
    }

    async fn exists(&self, path: &Path) -> bool {
        self.state.borrow().names.contains_key(path)
    }
}

/// A buffer for the simulated disk.
pub struct SimBuffer(Vec<u8>);

impl IoBuffer for SimBuffer {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }

    fn trim_to(&mut self, len: usize) {
        assert!(len <= self.0.len() && len.is_multiple_of(ALIGN));
        self.0.truncate(len);
    }
}

pub struct SimFile {
    fs: SimFileSystem,
    id: InodeId,
}

impl SimFile {
    async fn maybe_yield(&self) {
        let yields = {
            let mut st = self.fs.state.borrow_mut();
            let ppm = st.faults.yield_ppm;
            let most = u64::from(st.faults.yields_max.max(1));
            match st.rng.chance_ppm(ppm) {
                false => 0,
                // No second draw: seeds run before `yields_max` keep their
                // schedules.
                true if most == 1 => 1,
                true => 1 + st.rng.below(most),
            }
        };
        for _ in 0..yields {
            futures_lite::future::yield_now().await;
        }
    }
}

impl StorageFile for SimFile {
    type Buffer = SimBuffer;

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        assert!(len.is_multiple_of(ALIGN) && len > 0);
        // Unspecified contents, as on the real disk: fill with a pattern so a
        // writer that forgets to zero its padding is caught by tests.
        SimBuffer(vec![0xA5; len])
    }

    async fn write_at(&self, buf: Rc<SimBuffer>, pos: u64) -> io::Result<usize> {
        self.maybe_yield().await;
        let bytes = buf.as_slice();
        assert!(pos.is_multiple_of(ALIGN as u64) && bytes.len().is_multiple_of(ALIGN));
        let mut st = self.fs.state.borrow_mut();
        let write_eio_ppm = st.faults.write_eio_ppm;
        let short_write_ppm = st.faults.short_write_ppm;
        if st.rng.chance_ppm(write_eio_ppm) {
            return Err(st.eio());
        }
        let mut len = bytes.len();
        if len > ALIGN && st.rng.chance_ppm(short_write_ppm) {
            st.faults_injected += 1;
            len = (1 + st.rng.below((len / ALIGN - 1) as u64) as usize) * ALIGN;
        }
        st.check_space(self.id, pos + len as u64)?;
        let op = PendingOp::Write {
            pos,
            bytes: bytes[..len].to_vec(),
        };
        let inode = st.inode(self.id)?;
        Inode::apply(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(len)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let mut st = self.fs.state.borrow_mut();
        let read_eio_ppm = st.faults.read_eio_ppm;
        if st.rng.chance_ppm(read_eio_ppm) {
            return Err(st.eio());
        }
        let inode = st.inode(self.id)?;
        let start = (pos as usize).min(inode.data.len());
        let end = (pos as usize).saturating_add(len).min(inode.data.len());
        let bytes = Bytes::copy_from_slice(&inode.data[start..end]);
        st.bytes_read += bytes.len() as u64;
        Ok(bytes)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.maybe_yield().await;
        let mut st = self.fs.state.borrow_mut();
        let sync_eio_ppm = st.faults.sync_eio_ppm;
        if st.rng.chance_ppm(sync_eio_ppm) {
            // Like Linux after a failed fsync: which pending writes reached
            // the disk is unknown. Keep them pending; a later crash decides.
            return Err(st.eio());
        }
        let inode = st.inode(self.id)?;
        let pending = std::mem::take(&mut inode.pending);
        for op in &pending {
            Inode::apply(&mut inode.durable, op);
        }
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.state.borrow_mut();
        st.check_space(self.id, len)?;
        let inode = st.inode(self.id)?;
        if (inode.data.len() as u64) < len {
            let op = PendingOp::SetLen(len);
            Inode::apply(&mut inode.data, &op);
            inode.pending.push(op);
        }
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.state.borrow_mut();
        st.check_space(self.id, len)?;
        let inode = st.inode(self.id)?;
        let op = PendingOp::SetLen(len);
        Inode::apply(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let mut st = self.fs.state.borrow_mut();
        Ok(st.inode(self.id)?.data.len() as u64)
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_file, write_all_at, write_file_atomic};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::testing::block_on(f)
    }

    fn page(fill: u8, file: &SimFile) -> Rc<SimBuffer> {
        let mut b = file.alloc_buffer(ALIGN);
        b.as_mut_slice().fill(fill);
        Rc::new(b)
    }

    #[test]
    fn synced_data_survives_a_crash_and_unsynced_names_do_not() {
        block_on(async {
            let fs = SimFileSystem::reliable(1);
            let dir = Path::new("/d");
            let f = fs.open(&dir.join("a"), true).await.unwrap();
            write_all_at(&f, &page(1, &f), 0).await.unwrap();
            f.sync_data().await.unwrap();
            fs.sync_dir(dir).await.unwrap();
            let _g = fs.open(&dir.join("never-synced"), true).await.unwrap();
            write_all_at(&f, &page(2, &f), ALIGN as u64).await.unwrap();

            let crashed = fs.crash();
            let data = crashed.contents(&dir.join("a")).unwrap();
            assert_eq!(&data[..ALIGN], &[1u8; ALIGN][..]);
            assert!(crashed.contents(&dir.join("never-synced")).is_none());
        });
    }

    #[test]
    fn atomic_file_write_is_all_or_nothing_across_crashes() {
        for seed in 0..50 {
            block_on(async {
                let fs = SimFileSystem::reliable(seed);
                let path = Path::new("/d/checkpoint");
                write_file_atomic(&fs, path, b"first").await.unwrap();
                let second = fs.clone();
                write_file_atomic(&second, path, b"second").await.unwrap();
                let crashed = fs.crash();
                let got = read_file(&crashed, path).await.unwrap().unwrap();
                assert_eq!(&got[..6], b"second");
            });
        }
    }

    #[test]
    fn capacity_gives_enospc_until_raised() {
        block_on(async {
            let fs = SimFileSystem::reliable(3);
            fs.set_capacity(Some(ALIGN as u64));
            let f = fs.open(Path::new("/d/x"), true).await.unwrap();
            write_all_at(&f, &page(1, &f), 0).await.unwrap();
            let err = write_all_at(&f, &page(1, &f), ALIGN as u64).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(28));
            fs.set_capacity(None);
            write_all_at(&f, &page(1, &f), ALIGN as u64).await.unwrap();
        });
    }

    #[test]
    fn short_writes_are_completed_by_write_all() {
        block_on(async {
            let fs = SimFileSystem::new(
                9,
                SimFaults {
                    short_write_ppm: 500_000,
                    ..SimFaults::default()
                },
            );
            let f = fs.open(Path::new("/d/x"), true).await.unwrap();
            let mut b = f.alloc_buffer(16 * ALIGN);
            for (i, byte) in b.as_mut_slice().iter_mut().enumerate() {
                *byte = (i / ALIGN) as u8;
            }
            let b = Rc::new(b);
            write_all_at(&f, &b, 0).await.unwrap();
            assert_eq!(fs.contents(Path::new("/d/x")).unwrap(), b.as_slice());
            assert!(fs.faults_injected() > 0);
        });
    }
}
