//! The real disk: glommio direct I/O (O_DIRECT over io_uring).
//!
//! Must be used from inside a glommio executor, and each value only from the
//! executor that created it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::{ALIGN, FileSystem, IoBuffer, StorageFile};

impl IoBuffer for DmaBuffer {
    fn as_slice(&self) -> &[u8] {
        self.as_bytes()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }

    fn trim_to(&mut self, len: usize) {
        assert!(len <= self.len() && len.is_multiple_of(ALIGN));
        self.trim_to_size(len);
    }
}

/// Direct-I/O files on a real filesystem. Cheap to clone; one per shard.
#[derive(Clone, Default)]
pub struct DmaFileSystem {
    /// Devices whose io_uring polling support this executor has probed.
    primed_devices: Rc<RefCell<HashSet<u64>>>,
}

impl DmaFileSystem {
    pub fn new() -> DmaFileSystem {
        DmaFileSystem::default()
    }

    /// glommio decides once per device and executor whether reads may use the
    /// io_uring poll ring, by reading the first block of the first file it
    /// opens there. If that file is empty the probe read succeeds without
    /// reaching the device, polling is wrongly enabled, and every later read
    /// fails with EOPNOTSUPP on devices without poll queues. So before the
    /// first real open on a device, open a file that has a block of data.
    async fn prime_device(&self, dir: &Path) -> io::Result<()> {
        let device = std::fs::metadata(dir)?.dev();
        if self.primed_devices.borrow().contains(&device) {
            return Ok(());
        }
        let probe = dir.join(format!(".sluice-io-probe-{}", std::process::id()));
        std::fs::write(&probe, [0u8; ALIGN])?;
        let opened = DmaFile::open(&probe).await.map_err(io::Error::from);
        let _ = std::fs::remove_file(&probe);
        let file = opened?;
        let read = file.read_at_aligned(0, ALIGN).await.map(|_| ());
        file.close().await.map_err(io::Error::from)?;
        read.map_err(io::Error::from)?;
        self.primed_devices.borrow_mut().insert(device);
        Ok(())
    }
}

impl FileSystem for DmaFileSystem {
    type File = DmaStorageFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<DmaStorageFile> {
        let dir = path.parent().unwrap_or(Path::new("."));
        self.prime_device(dir).await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .map_err(io::Error::from)?;
        Ok(DmaStorageFile {
            file,
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(io::Error::from)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(io::Error::from)
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Directory creation happens when a partition is created or opened,
        // never on the data path; the blocking call is fine there.
        std::fs::create_dir_all(path)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = glommio::io::Directory::open(dir).await.map_err(io::Error::from)?;
        let synced = d.sync().await.map_err(io::Error::from);
        d.close().await.map_err(io::Error::from)?;
        synced
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

pub struct DmaStorageFile {
    file: DmaFile,
    path: PathBuf,
}

impl DmaStorageFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StorageFile for DmaStorageFile {
    type Buffer = DmaBuffer;

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        assert!(len.is_multiple_of(ALIGN) && len > 0);
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        assert!(pos.is_multiple_of(ALIGN as u64));
        self.file.write_rc_at(buf, pos).await.map_err(io::Error::from)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let read = self.file.read_at(pos, len).await.map_err(io::Error::from)?;
        Ok(Bytes::copy_from_slice(&read))
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        // keep_size = false: the file length covers the reservation, so
        // writes into it change no file size and fdatasync has no size to
        // commit.
        self.file.pre_allocate(len, false).await.map_err(io::Error::from)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(io::Error::from)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}
