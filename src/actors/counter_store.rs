//! Durable storage of k_server's counter: a small file with two copies of
//! the last reserved value.
//!
//! The file `counter.dat` in the store folder has two slots, each at the
//! start of its own 4 KiB block. A write replaces the slot without the
//! newest value and then waits for `fdatasync`. A write torn by a crash or
//! a power loss can therefore damage only that slot, while the other one
//! still contains the last durable value. Each slot carries a checksum,
//! and loading takes the larger value of the valid slots.
//!
//! The file keeps its size once created, so a write needs no new disk space
//! and goes on working when the disk is full.
//!
//! The counter used to live in a sled database in the same folder. sled
//! 0.34 hands each flush to its I/O thread pool and wakes all seven idle
//! threads of the pool for it, which took more than half of k_server's CPU
//! time with one client. A folder that contains such a database and no
//! counter file has its value imported once. The sled files stay, with the value
//! replaced by a marker that earlier versions reject as corrupt, so that
//! one started on the folder again cannot repeat values.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs2::FileExt as _;
use sha2::{Digest, Sha256};

use crate::actors::counter::{CounterError, CounterStore};

/// Name of the counter file in the store folder.
pub const FILE_NAME: &str = "counter.dat";

/// First bytes of a slot: names the format and its version.
const MAGIC: &[u8; 8] = b"CGCNTR01";
/// Magic, value (8 bytes, big-endian), then the first 16 bytes of the
/// SHA-256 of both.
const SLOT_LEN: usize = 32;
/// Each slot starts a 4 KiB block of its own, the unit in which the page
/// cache writes a file back, so that a torn write cannot reach both.
const SLOT_OFFSETS: [u64; 2] = [0, 4096];
const FILE_LEN: u64 = 8192;

fn encode(value: u64) -> [u8; SLOT_LEN] {
    let mut slot = [0; SLOT_LEN];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&value.to_be_bytes());
    let check = Sha256::digest(&slot[..16]);
    slot[16..].copy_from_slice(&check[..16]);
    slot
}

/// Returns the value of a slot, or `None` for a slot that is torn, blank or
/// not a counter slot.
fn decode(slot: &[u8; SLOT_LEN]) -> Option<u64> {
    if &slot[..8] != MAGIC {
        return None;
    }
    let check = Sha256::digest(&slot[..16]);
    if slot[16..] != check[..16] {
        return None;
    }
    let value: [u8; 8] = slot[8..16].try_into().ok()?;
    Some(u64::from_be_bytes(value))
}

/// The counter in `counter.dat`, as the module documentation describes.
pub struct FileStore {
    path: PathBuf,
    file: File,
    /// The store folder, opened and locked so that no other process uses
    /// the same counter. The lock ends when this handle is closed.
    _folder: File,
    /// Slot that the next write replaces: the one without the newest value.
    next_slot: usize,
}

impl FileStore {
    /// Opens the counter in the folder `folder`, creating both if missing.
    /// Fails if another process has the folder open as a store.
    pub fn open(folder: &Path) -> Result<Self, CounterError> {
        create_folder(folder)?;
        let lock = File::open(folder).map_err(|error| failed("cannot open", folder, error))?;
        if let Err(error) = lock.try_lock_exclusive() {
            if error.raw_os_error() == fs2::lock_contended_error().raw_os_error() {
                return Err(CounterError::Storage(format!(
                    "{} is in use by another k_server; stop it, or give this one a \
                     store.path of its own",
                    folder.display()
                )));
            }
            return Err(failed("cannot lock", folder, error));
        }

        let path = folder.join(FILE_NAME);
        let database = folder.join("db");
        let has_sled = database
            .try_exists()
            .map_err(|error| failed("cannot open", &database, error))?;
        let has_file = path
            .try_exists()
            .map_err(|error| failed("cannot open", &path, error))?;
        match (has_file, has_sled) {
            (false, false) => create(&path, &lock, 0)?,
            (false, true) => {
                // One sled handle for both steps: sled releases its lock
                // only some time after a handle is dropped.
                let mut sled = SledStore::open(folder)?;
                let value = sled.load()?;
                create(&path, &lock, value)?;
                tracing::info!(
                    value,
                    folder = %folder.display(),
                    "counter imported from the sled database; its files are no longer read"
                );
                retire(folder, Ok(sled));
            }
            (true, true) => retire(folder, SledStore::open(folder)),
            (true, false) => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| failed("cannot open", &path, error))?;
        let mut store = FileStore {
            path,
            file,
            _folder: lock,
            next_slot: 0,
        };
        store.read_slots()?;
        Ok(store)
    }

    /// Reads both slots, sets the slot for the next write and returns the
    /// newest value.
    fn read_slots(&mut self) -> Result<u64, CounterError> {
        let len = self
            .file
            .metadata()
            .map_err(|error| failed("cannot read", &self.path, error))?
            .len();
        if len != FILE_LEN {
            return Err(self.corrupt(&format!("expected {FILE_LEN} bytes, found {len}")));
        }

        let mut values = [None; 2];
        for (value, offset) in values.iter_mut().zip(SLOT_OFFSETS) {
            let mut slot = [0; SLOT_LEN];
            self.file
                .read_exact_at(&mut slot, offset)
                .map_err(|error| failed("cannot read", &self.path, error))?;
            *value = decode(&slot);
        }
        let (newest, value) = match values {
            [Some(first), Some(second)] if second > first => (1, second),
            [Some(first), _] => (0, first),
            [None, Some(second)] => (1, second),
            [None, None] => return Err(self.corrupt("neither copy of the value is valid")),
        };
        self.next_slot = 1 - newest;
        Ok(value)
    }

    fn corrupt(&self, reason: &str) -> CounterError {
        CounterError::Corrupt(format!(
            "{}: {reason}. The server cannot tell the last value it handed out, so it \
             does not start. Keep the file for inspection; deleting it or putting back \
             an older copy would repeat values. To go on, write a counter file whose \
             value is above every value clients have received",
            self.path.display()
        ))
    }
}

impl CounterStore for FileStore {
    fn load(&mut self) -> Result<u64, CounterError> {
        self.read_slots()
    }

    /// Writes `value` into the slot without the newest value and waits
    /// until it is on disk.
    ///
    /// After a failed write or sync that slot may hold the new value, an
    /// older one or torn bytes, while the other slot keeps the last durable
    /// value. The next write goes to the same slot again. A value whose sync
    /// failed may still reach the disk later, so a restart can continue
    /// after it: that skips values, and never repeats one.
    fn store(&mut self, value: u64) -> Result<(), CounterError> {
        let offset = SLOT_OFFSETS[self.next_slot];
        self.file
            .write_all_at(&encode(value), offset)
            .map_err(|error| failed("cannot write", &self.path, error))?;
        self.file
            .sync_data()
            .map_err(|error| failed("cannot flush", &self.path, error))?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }
}

/// Creates `folder` if it is missing, and syncs its parent so that the new
/// folder, and the counter file created in it, survive a power loss.
fn create_folder(folder: &Path) -> Result<(), CounterError> {
    if folder.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(folder).map_err(|error| failed("cannot create", folder, error))?;
    let parent = match folder.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|parent| parent.sync_all())
        .map_err(|error| failed("cannot flush", parent, error))
}

fn failed(action: &str, path: &Path, error: io::Error) -> CounterError {
    CounterError::Storage(format!("{action} {}: {error}", path.display()))
}

/// Creates the counter file at `path` holding `value` in both slots. The
/// file is written and synced under a temporary name and then renamed, so
/// a crash leaves either no counter file or a complete one.
fn create(path: &Path, folder: &File, value: u64) -> Result<(), CounterError> {
    let temporary = path.with_extension("dat.new");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|error| failed("cannot create", &temporary, error))?;
    let written = file
        .set_len(FILE_LEN)
        .and_then(|()| {
            SLOT_OFFSETS
                .iter()
                .try_for_each(|&offset| file.write_all_at(&encode(value), offset))
        })
        .and_then(|()| file.sync_all());
    written.map_err(|error| failed("cannot write", &temporary, error))?;
    std::fs::rename(&temporary, path).map_err(|error| failed("cannot create", path, error))?;
    // The rename is durable once the folder is synced.
    folder
        .sync_all()
        .map_err(|error| failed("cannot flush", path, error))
}

/// Replaces the value in the old sled database with [`SledStore::RETIRED`],
/// so that an earlier version started on this folder refuses to start
/// instead of continuing from a stale value and repeating values. Runs at
/// every start while the database exists, so that a crash between the
/// import and this step is caught up. A failure is logged and the counter
/// still starts, because the counter file does not depend on it.
fn retire(folder: &Path, sled: Result<SledStore, CounterError>) {
    if let Err(error) = sled.and_then(|mut sled| sled.retire()) {
        tracing::warn!(
            %error,
            folder = %folder.display(),
            "cannot mark the old sled counter as moved; an earlier version started on this folder would repeat values"
        );
    }
}

/// The counter as earlier versions stored it: tree `counter`, key `value`,
/// the value as 8 bytes big-endian. Read to import it, then retired.
pub(crate) struct SledStore {
    path: PathBuf,
    tree: sled::Tree,
    // Kept open for the tree's lifetime. Dropping the last handle releases
    // the database's file lock.
    _db: sled::Db,
}

impl SledStore {
    pub(crate) const TREE: &'static str = "counter";
    pub(crate) const KEY: &'static [u8] = b"value";
    /// Stored in place of the value once it is imported. It is not 8 bytes
    /// long, so earlier versions reject it as corrupt.
    pub(crate) const RETIRED: &'static [u8] = b"moved to counter.dat";

    /// How long to wait for sled's lock on the database. sled releases it
    /// some time after the last handle in the process is dropped.
    const LOCK_WAIT: Duration = Duration::from_secs(2);

    fn open(path: &Path) -> Result<Self, CounterError> {
        let deadline = Instant::now() + Self::LOCK_WAIT;
        let db = loop {
            match sled::open(path) {
                Ok(db) => break db,
                // sled reports a held lock only in its message.
                Err(sled::Error::Io(error))
                    if error.to_string().starts_with("could not acquire lock") =>
                {
                    if Instant::now() >= deadline {
                        return Err(CounterError::Storage(format!(
                            "the sled database in {} is locked by another process, \
                             probably an earlier k_server; stop it first",
                            path.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(sled_failed("cannot open", path, error)),
            }
        };
        let tree = db
            .open_tree(Self::TREE)
            .map_err(|error| sled_failed("cannot open", path, error))?;
        Ok(SledStore {
            path: path.to_path_buf(),
            tree,
            _db: db,
        })
    }

    fn load(&mut self) -> Result<u64, CounterError> {
        let stored = self
            .tree
            .get(Self::KEY)
            .map_err(|error| sled_failed("cannot read", &self.path, error))?;
        let Some(bytes) = stored else {
            return Ok(0);
        };
        if bytes.as_ref() == Self::RETIRED {
            return Err(CounterError::Corrupt(format!(
                "{}: the counter moved from the sled database to {FILE_NAME}, which is \
                 missing. Put back the {FILE_NAME} this server used last; an older copy, \
                 or none, would repeat values",
                self.path.display()
            )));
        }
        let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
            CounterError::Corrupt(format!(
                "{}: sled record `value`: expected 8 bytes, found {}",
                self.path.display(),
                bytes.len()
            ))
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Stores [`Self::RETIRED`] unless it is there already.
    fn retire(&mut self) -> Result<(), CounterError> {
        let stored = self
            .tree
            .get(Self::KEY)
            .map_err(|error| sled_failed("cannot read", &self.path, error))?;
        if stored.as_deref() == Some(Self::RETIRED) {
            return Ok(());
        }
        self.tree
            .insert(Self::KEY, Self::RETIRED)
            .map_err(|error| sled_failed("cannot write", &self.path, error))?;
        self.tree
            .flush()
            .map_err(|error| sled_failed("cannot flush", &self.path, error))?;
        Ok(())
    }
}

/// Describes a sled error. sled's own text for an I/O error is the Debug
/// form of `io::Error`, so this uses its Display form instead.
fn sled_failed(action: &str, path: &Path, error: sled::Error) -> CounterError {
    let reason = match error {
        sled::Error::Io(error) => error.to_string(),
        other => other.to_string(),
    };
    CounterError::Storage(format!("{action} {}: {reason}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        (dir, path)
    }

    fn slot_at(path: &Path, index: usize) -> [u8; SLOT_LEN] {
        let file = File::open(path.join(FILE_NAME)).expect("open");
        let mut slot = [0; SLOT_LEN];
        file.read_exact_at(&mut slot, SLOT_OFFSETS[index])
            .expect("read slot");
        slot
    }

    fn write_at(path: &Path, bytes: &[u8], offset: u64) {
        let file = OpenOptions::new()
            .write(true)
            .open(path.join(FILE_NAME))
            .expect("open");
        file.write_all_at(bytes, offset).expect("write");
    }

    #[test]
    fn slot_round_trip() {
        assert_eq!(decode(&encode(0)), Some(0));
        assert_eq!(decode(&encode(u64::MAX)), Some(u64::MAX));
        let mut flipped = encode(7);
        flipped[9] ^= 1;
        assert_eq!(decode(&flipped), None);
        assert_eq!(decode(&[0; SLOT_LEN]), None);
    }

    #[test]
    fn new_store_starts_at_zero() {
        let (_dir, path) = folder();
        let mut store = FileStore::open(&path).expect("open");
        assert_eq!(store.load(), Ok(0));
        let len = std::fs::metadata(path.join(FILE_NAME)).expect("file").len();
        assert_eq!(len, FILE_LEN);
    }

    #[test]
    fn writes_alternate_slots() {
        let (_dir, path) = folder();
        let mut store = FileStore::open(&path).expect("open");
        store.store(5).expect("store 5");
        assert_eq!(decode(&slot_at(&path, 1)), Some(5));
        assert_eq!(decode(&slot_at(&path, 0)), Some(0));
        store.store(9).expect("store 9");
        assert_eq!(decode(&slot_at(&path, 0)), Some(9));
        assert_eq!(decode(&slot_at(&path, 1)), Some(5));
    }

    #[test]
    fn reopen_returns_last_value() {
        let (_dir, path) = folder();
        let mut store = FileStore::open(&path).expect("open");
        for value in [3, 4, 10] {
            store.store(value).expect("store");
        }
        drop(store);

        let mut store = FileStore::open(&path).expect("reopen");
        assert_eq!(store.load(), Ok(10));
        store.store(11).expect("store after reopen");
        drop(store);
        assert_eq!(FileStore::open(&path).expect("open").load(), Ok(11));
    }

    #[test]
    fn torn_slot_falls_back_to_other() {
        let (_dir, path) = folder();
        let mut store = FileStore::open(&path).expect("open");
        store.store(20).expect("store 20");
        store.store(21).expect("store 21");
        drop(store);
        // 21 is in slot 0. Tear it as a crash during its write would.
        write_at(&path, &[0xff; 12], SLOT_OFFSETS[0] + 4);

        let mut store = FileStore::open(&path).expect("open with a torn slot");
        assert_eq!(store.load(), Ok(20));
        // The next write replaces the torn slot and keeps the valid one.
        store.store(22).expect("store 22");
        assert_eq!(decode(&slot_at(&path, 0)), Some(22));
        assert_eq!(decode(&slot_at(&path, 1)), Some(20));
    }

    #[test]
    fn both_slots_invalid_is_corrupt() {
        let (_dir, path) = folder();
        drop(FileStore::open(&path).expect("open"));
        write_at(&path, &[0; SLOT_LEN], SLOT_OFFSETS[0]);
        write_at(&path, b"not a counter", SLOT_OFFSETS[1]);

        let error = FileStore::open(&path).err().expect("corrupt file");
        assert!(matches!(error, CounterError::Corrupt(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(FILE_NAME), "{message}");
        assert!(message.contains("neither copy"), "{message}");
        assert!(message.contains("would repeat values"), "{message}");
    }

    #[test]
    fn wrong_length_is_corrupt() {
        let (_dir, path) = folder();
        drop(FileStore::open(&path).expect("open"));
        let file = OpenOptions::new()
            .write(true)
            .open(path.join(FILE_NAME))
            .expect("open");
        file.set_len(100).expect("truncate");

        let error = FileStore::open(&path).err().expect("short file");
        assert!(matches!(error, CounterError::Corrupt(_)), "{error:?}");
        assert!(
            error.to_string().contains("expected 8192 bytes, found 100"),
            "{error}"
        );
    }

    #[test]
    fn second_open_is_rejected() {
        let (_dir, path) = folder();
        let _first = FileStore::open(&path).expect("open");

        let error = FileStore::open(&path).err().expect("folder in use");
        let message = error.to_string();
        assert!(message.contains("in use by another k_server"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    /// Writes `record` as the old sled counter's value in `path`.
    fn sled_counter(path: &Path, record: &[u8]) {
        let sled = SledStore::open(path).expect("open sled");
        sled.tree.insert(SledStore::KEY, record).expect("insert");
        sled.tree.flush().expect("flush");
    }

    fn sled_record(path: &Path) -> Vec<u8> {
        let sled = SledStore::open(path).expect("open sled");
        let record = sled.tree.get(SledStore::KEY).expect("read");
        record.expect("record").to_vec()
    }

    #[test]
    fn sled_value_imported_once() {
        let (_dir, path) = folder();
        sled_counter(&path, &41u64.to_be_bytes());

        let mut store = FileStore::open(&path).expect("open with sled data");
        assert_eq!(store.load(), Ok(41));
        store.store(42).expect("store");
        drop(store);
        assert_eq!(sled_record(&path), SledStore::RETIRED);

        // The sled database is not read again, and is retired again.
        sled_counter(&path, &7u64.to_be_bytes());
        assert_eq!(FileStore::open(&path).expect("reopen").load(), Ok(42));
        assert_eq!(sled_record(&path), SledStore::RETIRED);
    }

    #[test]
    fn retired_sled_without_file_is_corrupt() {
        let (_dir, path) = folder();
        sled_counter(&path, &41u64.to_be_bytes());
        drop(FileStore::open(&path).expect("import"));
        std::fs::remove_file(path.join(FILE_NAME)).expect("remove the counter file");

        let error = FileStore::open(&path)
            .err()
            .expect("only the marker is left");
        assert!(matches!(error, CounterError::Corrupt(_)), "{error:?}");
        assert!(error.to_string().contains("which is missing"), "{error}");
        assert!(
            !path.join(FILE_NAME).exists(),
            "no counter file from the marker"
        );
    }

    #[test]
    fn sled_record_of_wrong_length_is_corrupt() {
        let (_dir, path) = folder();
        sled_counter(&path, &[1, 2, 3]);

        let error = FileStore::open(&path).err().expect("corrupt sled record");
        assert!(matches!(error, CounterError::Corrupt(_)), "{error:?}");
        assert!(
            error.to_string().contains("expected 8 bytes, found 3"),
            "{error}"
        );
        assert!(
            !path.join(FILE_NAME).exists(),
            "no counter file may be created from a corrupt database"
        );
    }
}
