//! The live audit log: a handle that many tasks share and a single writer thread that commits
//! their records in groups.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{
    AppendError, Context, OpenError, QueryError, SealError, StoreError, TryAppendError, VerifyError,
};
use crate::journal::{self, Journal, UnplacedFrame};
use crate::query::{Page, Query, Stats, StatsQuery, query_dir, stats_dir};
use crate::record::{
    Anchor, ChainHash, Entry, chain_hash, chain_hash_of_bytes, decode_canonical, decode_view,
};
use crate::segment::{
    self, INSERT_MANY, INSERT_ONE, LOCK_FILE, ROWS_PER_INSERT, SealRow, SegmentHeader, audit_dir,
    bind_record, create_segment, finish_sealed, is_writable, list_segments, open_reader,
    open_writer, read_header, read_seal,
};
use crate::verify::{VerifyReport, verify_dir, verify_dir_with_anchor};

/// What an acknowledgement promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = FULL`: the WAL is fsynced before a batch is acknowledged, so an acknowledged
    /// record survives a kill -9, a kernel crash and a power cut. Costs one fsync per batch.
    #[default]
    Full,
    /// An append is chained at once and written to the journal (`journal-*.log` beside the
    /// segments) when its future is first polled or dropped, with one `write` for every record
    /// queued by then, and acknowledged when that write returns; the writer thread commits
    /// journaled records to the segment later, in large batches, with `synchronous = NORMAL`. An
    /// acknowledged record survives a kill -9 of the server, because the kernel holds the
    /// journal's data and the next open commits what the segments miss. The last records can be
    /// lost to a kernel crash or a power cut. The chain stays valid either way: a torn journal
    /// tail is an unacknowledged append, and SQLite only drops whole transactions from the end of
    /// the WAL.
    ProcessCrash,
}

/// How [`AuditLog::open`] sets up the log.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The server's data directory; the log lives in `<data_dir>/audit/`.
    pub data_dir: PathBuf,
    /// What an acknowledged append promises.
    pub durability: Durability,
    /// Most records committed in one transaction; records written to the journal together are
    /// not split, so a transaction may exceed it by one such group.
    pub max_batch: usize,
    /// Appends (with a journal: groups of appends written together) waiting for the writer
    /// before `append` itself waits (back-pressure).
    pub queue_capacity: usize,
    /// Seal the active segment and start the next one at every seq that is a multiple of this
    /// (batches are cut there, so such a segment ends exactly at the multiple); 0 never seals on
    /// its own.
    pub seal_every_records: u64,
}

impl Config {
    /// Defaults: [`Durability::Full`], batches of up to 1024 records, a queue of 8192, no
    /// automatic seals.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            durability: Durability::Full,
            max_batch: 1024,
            queue_capacity: 8192,
            seal_every_records: 0,
        }
    }
}

/// A sealed segment, as returned by [`AuditLog::seal`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealedSegment {
    /// Segment number, starting at 1.
    pub number: u32,
    /// The segment file, now read-only.
    pub path: PathBuf,
    /// First seq in the segment.
    pub first_seq: u64,
    /// Last seq in the segment.
    pub last_seq: u64,
    /// Hash of the last record, also the genesis prev_hash of the next segment.
    pub last_hash: ChainHash,
}

/// Counters of the writer thread, to check and monitor group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed with at least one record.
    pub batches: u64,
    /// Records committed.
    pub records: u64,
    /// Largest number of records in one transaction.
    pub largest_batch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    records: AtomicU64,
    largest_batch: AtomicU64,
    /// Set when a commit fails, cleared when one succeeds.
    failing: AtomicBool,
    /// Set when writing to the journal fails, cleared when a write succeeds.
    journal_failing: AtomicBool,
}

enum Command {
    Append {
        entry: Entry,
        ack: oneshot::Sender<Result<u64, AppendError>>,
    },
    /// Records already chained, journaled and acknowledged, for the writer to commit: their
    /// frames exactly as one write put them into the journal.
    Ingest {
        frames: Vec<u8>,
        /// How many records the frames hold.
        count: usize,
        /// The hash the first of them chains from.
        prev: ChainHash,
        /// A journal file that the last of them completes: it can go once that is committed.
        retire: Option<PathBuf>,
    },
    Seal {
        ack: oneshot::Sender<Result<Option<SealedSegment>, SealError>>,
    },
}

/// Handle to the audit log; cheap to clone and shared by every task that records.
///
/// Dropping the last handle stops the writer thread after it has committed everything already
/// queued, and waits for it, so a new [`AuditLog::open`] of the same directory can follow.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// A record with its place in the chain, as the journal holds it.
struct Chained {
    seq: u64,
    /// Its canonical encoding: `range` of a buffer that may hold the frames of other records too,
    /// so that a group written to the journal together reaches SQLite without a copy.
    buffer: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    prev: ChainHash,
    hash: ChainHash,
}

impl Chained {
    fn canonical(&self) -> &[u8] {
        &self.buffer[self.range.clone()]
    }
}

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    sender: Option<mpsc::Sender<Command>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The last acknowledged record. With a journal, appends chain from it under the journal's
    /// lock; without one, the writer moves it after each commit.
    head: Arc<Mutex<Anchor>>,
    counters: Arc<Counters>,
    /// `Some` with [`Durability::ProcessCrash`]: the journal that appends write to.
    journal: Option<Mutex<JournalState>>,
    /// The highest seq committed to a segment.
    committed: watch::Receiver<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every append future holds this value, so each one has already written its record;
        // this only makes sure of it before the writer is told to finish.
        self.write_journal();
        // Closing the channel lets the writer drain what is queued and return.
        self.sender.take();
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A panicked writer has already failed every pending append with `Closed`; there is
            // nothing more to report from a destructor.
            let _ = handle.join();
        }
        let head = self.head.lock().unwrap_or_else(PoisonError::into_inner).seq;
        if let Some(journal) = self.journal.take()
            && *self.committed.borrow() >= head
        {
            let journal = journal.into_inner().unwrap_or_else(PoisonError::into_inner);
            // Every record of the journal is committed; a journal that stays behind is only read
            // again and skipped by the next open.
            if let Err(error) = fs::remove_file(journal.file.path()) {
                tracing::warn!(%error, "cannot remove the committed audit journal");
            }
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log under `config.data_dir`, takes its lock, recovers from an
    /// interrupted seal and starts the writer thread. Blocking; call it at startup.
    pub fn open(config: Config) -> Result<AuditLog, OpenError> {
        let dir = audit_dir(&config.data_dir);
        fs::create_dir_all(&dir).at(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => {
                return Err(StoreError::Io {
                    path: lock_path,
                    source: e,
                }
                .into());
            }
        }
        segment::remove_temporaries(&dir)?;

        let mut segments = list_segments(&dir)?;
        if segments.is_empty() {
            let header = SegmentHeader {
                number: 1,
                first_seq: 1,
                genesis: ChainHash::GENESIS,
            };
            segments.push((1, create_segment(&dir, header)?));
        }
        // Every segment but the last is sealed; finish any whose seal a crash interrupted.
        let (last_number, last_path) = segments.pop().unwrap_or_else(|| unreachable!());
        for (_, path) in &segments {
            finish_if_sealed(path)?;
        }
        let reader = open_reader(&last_path)?;
        let header = read_header(&reader, &last_path)?;
        if header.number != last_number {
            return Err(StoreError::Corrupt {
                path: last_path,
                reason: format!("header says segment {}", header.number),
            }
            .into());
        }
        let seal = read_seal(&reader, &last_path)?;
        drop(reader);
        let full_sync = config.durability == Durability::Full;
        let (active_path, header) = match seal {
            None => (last_path, header),
            Some(seal) => {
                // The crash came after the seal row was committed and before the next segment
                // existed: finish the seal now, exactly as `seal` would have.
                finish_if_sealed(&last_path)?;
                let next = SegmentHeader {
                    number: last_number + 1,
                    first_seq: seal.last_seq + 1,
                    genesis: seal.last_hash,
                };
                (create_segment(&dir, next)?, next)
            }
        };
        let conn = open_writer(&active_path, full_sync)?;
        let (head_seq, head_hash) = segment::last_record(&conn, &active_path)?
            .unwrap_or((header.first_seq.saturating_sub(1), header.genesis));
        let head = Arc::new(Mutex::new(Anchor {
            seq: head_seq,
            hash: head_hash,
        }));
        let counters = Arc::new(Counters::default());
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let (committed_sender, committed) = watch::channel(head_seq);
        let journaled = config.durability == Durability::ProcessCrash;
        let mut writer = Writer {
            dir,
            full_sync,
            journaled,
            retired: Vec::new(),
            committed: committed_sender,
            left_in_journal: None,
            max_batch: config.max_batch.max(1),
            seal_every: config.seal_every_records,
            active: Some(Active {
                conn,
                path: active_path,
                header,
            }),
            segment_number: header.number,
            head_seq,
            head_hash,
            shared_head: Arc::clone(&head),
            counters: Arc::clone(&counters),
            _lock: lock,
        };
        writer.recover_journals()?;
        let head_seq = writer.head_seq;
        *head.lock().unwrap_or_else(PoisonError::into_inner) = Anchor {
            seq: head_seq,
            hash: writer.head_hash,
        };
        let journal = if journaled {
            Some(Mutex::new(JournalState {
                file: Journal::create(&writer.dir, head_seq + 1)?,
                group: None,
            }))
        } else {
            None
        };
        let handle = std::thread::Builder::new()
            .name("cordon-audit-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(OpenError::Thread)?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                data_dir: config.data_dir,
                sender: Some(sender),
                writer: Mutex::new(Some(handle)),
                head,
                counters,
                journal,
                committed,
            }),
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Command>, ()> {
        self.inner.sender.as_ref().ok_or(())
    }

    /// Appends one record and resolves with its seq once the transaction holding it is committed
    /// with the configured [`Durability`].
    ///
    /// If the future is dropped after the entry was queued, the entry is still committed, just not
    /// acknowledged. An entry that was never acknowledged can be lost to a kill -9.
    pub async fn append(&self, entry: Entry) -> Result<u64, AppendError> {
        match self.try_append(entry) {
            Ok(appending) => appending.await,
            Err(TryAppendError::Full(entry)) => {
                let sender = self.sender().map_err(|()| AppendError::Closed)?;
                if let Some(journal) = &self.inner.journal {
                    let permit = sender
                        .clone()
                        .reserve_owned()
                        .await
                        .map_err(|_| AppendError::Closed)?;
                    return match self.journal_append(journal, *entry, Some(permit)) {
                        Ok(appending) => appending.await,
                        Err(TryAppendError::Append(error)) => Err(error),
                        // A reserved place is never refused.
                        Err(TryAppendError::Full(_)) => Err(AppendError::Closed),
                    };
                }
                let (ack, done) = oneshot::channel();
                sender
                    .send(Command::Append { entry: *entry, ack })
                    .await
                    .map_err(|_| AppendError::Closed)?;
                Appending {
                    state: AppendingState::Queued(done),
                }
                .await
            }
            Err(TryAppendError::Append(error)) => Err(error),
        }
    }

    /// Queues one record without waiting, for callers that must not yield before the record is
    /// queued. The returned [`Appending`] resolves like [`AuditLog::append`]; dropping it does
    /// not withdraw the record. When the queue is full the entry comes back in
    /// [`TryAppendError::Full`], and [`AuditLog::append`] is the way to wait for room.
    ///
    /// With [`Durability::ProcessCrash`] the record is chained here and written to the journal
    /// when the returned future is first polled or dropped, together with every record queued by
    /// then: a caller that lets its other ready tasks run before awaiting shares that `write`
    /// with them.
    pub fn try_append(&self, entry: Entry) -> Result<Appending, TryAppendError> {
        entry.validate().map_err(AppendError::from)?;
        let sender = self.sender().map_err(|()| AppendError::Closed)?;
        if let Some(journal) = &self.inner.journal {
            return self.journal_append(journal, entry, None);
        }
        let (ack, done) = oneshot::channel();
        match sender.try_send(Command::Append { entry, ack }) {
            Ok(()) => Ok(Appending {
                state: AppendingState::Queued(done),
            }),
            Err(mpsc::error::TrySendError::Full(Command::Append { entry, .. })) => {
                Err(TryAppendError::Full(Box::new(entry)))
            }
            Err(_) => Err(AppendError::Closed.into()),
        }
    }

    /// Chains `entry` to the head and adds it to the records waiting for the journal's next
    /// write, under the journal's lock, so that the journal, the writer's queue and the head agree
    /// on the order. The returned future writes them, unless another append's did first. The
    /// records written together go to the writer as one command, in the place in its queue that
    /// the first of them reserved (`reserved`, or one taken here).
    fn journal_append(
        &self,
        journal: &Mutex<JournalState>,
        entry: Entry,
        reserved: Option<mpsc::OwnedPermit<Command>>,
    ) -> Result<Appending, TryAppendError> {
        let mut frame = UnplacedFrame::new(&entry);
        let mut state = journal.lock().unwrap_or_else(PoisonError::into_inner);
        let mut head = self
            .inner
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let group = match &mut state.group {
            Some(group) => group,
            None => {
                let permit = match reserved {
                    Some(permit) => permit,
                    None => {
                        let sender = self.sender().map_err(|()| AppendError::Closed)?;
                        match sender.clone().try_reserve_owned() {
                            Ok(permit) => permit,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                return Err(TryAppendError::Full(Box::new(entry)));
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                return Err(AppendError::Closed.into());
                            }
                        }
                    }
                };
                state.group.insert(Group {
                    frames: Vec::new(),
                    count: 0,
                    permit,
                    before: *head,
                    outcome: Arc::default(),
                })
            }
        };
        let seq = head.seq + 1;
        let (hash, bytes) = frame.place(seq, &head.hash);
        group.frames.extend_from_slice(bytes);
        group.count += 1;
        *head = Anchor { seq, hash };
        drop(head);
        let outcome = Arc::clone(&group.outcome);
        if group.frames.len() >= WRITE_AT_BYTES {
            state.write(&self.inner.head, &self.inner.counters);
        }
        drop(state);
        // The entry's strings are freed here, on the caller's thread, where they were made; only
        // the frames travel to the writer thread.
        drop(entry);
        Ok(Appending {
            state: AppendingState::Journaled(Some(Unwritten {
                seq,
                outcome,
                inner: Arc::clone(&self.inner),
            })),
        })
    }

    /// With a journal, waits (briefly) until the writer has committed every record acknowledged
    /// before this call, so that a query sees the caller's own records.
    async fn catch_up(&self) {
        if self.inner.journal.is_none() || self.is_failing() {
            return;
        }
        let target = self.head().seq;
        let mut committed = self.inner.committed.clone();
        // A writer that cannot commit must not hang queries: they then show what is committed.
        let _ = tokio::time::timeout(CATCH_UP_WAIT, committed.wait_for(|seq| *seq >= target)).await;
    }

    /// Seals the active segment after everything appended before this call, and starts the next
    /// segment whose genesis prev_hash is the sealed segment's last hash. Returns `None` when the
    /// active segment is empty, since an empty sealed segment would record nothing.
    pub async fn seal(&self) -> Result<Option<SealedSegment>, SealError> {
        self.inner.write_journal();
        let (ack, done) = oneshot::channel();
        let sender = self.sender().map_err(|()| SealError::Closed)?;
        sender
            .send(Command::Seal { ack })
            .await
            .map_err(|_| SealError::Closed)?;
        done.await.map_err(|_| SealError::Closed)?
    }

    /// The last acknowledged record. Storing it outside the data directory makes truncation and
    /// rewrites detectable (see [`crate::verify_dir_with_anchor`]).
    pub fn head(&self) -> Anchor {
        self.inner.write_journal();
        *self
            .inner
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Group-commit counters.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Whether the writer's last attempt to commit records failed (a full disk, a segment that
    /// could not be created), or the writer thread is gone. A failed commit clears with the next
    /// one that succeeds, so a server that refuses calls while this is set must keep appending
    /// the records of its refusals: they are what finds out that the log works again.
    pub fn is_failing(&self) -> bool {
        self.inner.counters.failing.load(Ordering::Relaxed)
            || self.inner.counters.journal_failing.load(Ordering::Relaxed)
            || self.sender().map_or(true, mpsc::Sender::is_closed)
    }

    /// The data directory this log was opened in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// [`query_dir`] on a blocking thread.
    pub async fn query(&self, query: Query) -> Result<Page, QueryError> {
        self.catch_up().await;
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || query_dir(&dir, &query))
            .await
            .map_err(|_| QueryError::Interrupted)?
    }

    /// [`stats_dir`] on a blocking thread.
    pub async fn stats(&self, query: StatsQuery) -> Result<Stats, QueryError> {
        self.catch_up().await;
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || stats_dir(&dir, &query))
            .await
            .map_err(|_| QueryError::Interrupted)?
    }

    /// [`verify_dir`] on a blocking thread. It reads committed data only, so it can run while
    /// records are appended; it then checks a prefix of the log.
    pub async fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || verify_dir(&dir))
            .await
            .map_err(|_| VerifyError::Interrupted)?
    }

    /// Like [`AuditLog::verify`], and also checks the log against `anchor`, as
    /// [`verify_dir_with_anchor`] does.
    pub async fn verify_with_anchor(&self, anchor: Anchor) -> Result<VerifyReport, VerifyError> {
        let dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || verify_dir_with_anchor(&dir, &anchor))
            .await
            .map_err(|_| VerifyError::Interrupted)?
    }
}

/// A queued record: resolves with its seq once the record is acknowledged with the configured
/// [`Durability`].
#[derive(Debug)]
#[must_use = "a record is only known to be committed once this resolves"]
pub struct Appending {
    state: AppendingState,
}

#[derive(Debug)]
enum AppendingState {
    /// Waiting for the writer's commit.
    Queued(oneshot::Receiver<Result<u64, AppendError>>),
    /// Chained and on its way to the journal; `None` once the outcome has been handed out.
    Journaled(Option<Unwritten>),
}

impl Future for Appending {
    type Output = Result<u64, AppendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AppendingState::Queued(done) => Pin::new(done)
                .poll(cx)
                .map(|acked| acked.unwrap_or(Err(AppendError::Closed))),
            AppendingState::Journaled(unwritten) => Poll::Ready(
                unwritten
                    .take()
                    .map_or(Err(AppendError::Closed), Unwritten::finish),
            ),
        }
    }
}

/// How the journal write of a group of records went, shared by their [`Appending`] futures.
type WriteOutcome = OnceLock<Result<(), Arc<StoreError>>>;

/// Size of the records waiting for the journal at which the append that adds to them writes
/// them at once, so that callers that never poll their appends cannot grow the buffer.
const WRITE_AT_BYTES: usize = 256 << 10;

/// The journal, and the records chained since its last write.
///
/// Appends only chain their record and add its frame to the group waiting here; the first of
/// their futures to be polled (or dropped) writes the whole group with one `write`. A server that
/// lets its other ready calls run before it awaits an append thereby shares that system call
/// among all of them.
#[derive(Debug)]
struct JournalState {
    file: Journal,
    /// The records chained since the last write; `None` when there are none.
    group: Option<Group>,
}

/// Records waiting for the journal's next write.
#[derive(Debug)]
struct Group {
    /// Their frames, in seq order.
    frames: Vec<u8>,
    count: usize,
    /// Their place in the writer's queue, taken by the first of them.
    permit: mpsc::OwnedPermit<Command>,
    /// The head before the first of them, restored when their write fails.
    before: Anchor,
    /// Where the outcome of their write goes.
    outcome: Arc<WriteOutcome>,
}

impl JournalState {
    /// Writes the waiting records to the journal and hands them to the writer. When the write
    /// fails, none of them is acknowledged and the head goes back to where they started, so the
    /// chain continues from the last record that was written.
    fn write(&mut self, head: &Mutex<Anchor>, counters: &Counters) {
        let Some(group) = self.group.take() else {
            return;
        };
        if let Err(error) = self.file.write(&group.frames) {
            counters.journal_failing.store(true, Ordering::Relaxed);
            *head.lock().unwrap_or_else(PoisonError::into_inner) = group.before;
            let _ = group.outcome.set(Err(Arc::new(error)));
            return;
        }
        counters.journal_failing.store(false, Ordering::Relaxed);
        let retire = if self.file.is_due_for_rotation() {
            let next_seq = group.before.seq + group.count as u64 + 1;
            match self.file.next(next_seq) {
                Ok(next) => Some(std::mem::replace(&mut self.file, next).path().to_path_buf()),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the next audit journal file");
                    self.file.postpone_rotation();
                    None
                }
            }
        } else {
            None
        };
        group.permit.send(Command::Ingest {
            frames: group.frames,
            count: group.count,
            prev: group.before.hash,
            retire,
        });
        let _ = group.outcome.set(Ok(()));
    }
}

impl Inner {
    /// Writes the records waiting for the journal, if there are any.
    fn write_journal(&self) {
        if let Some(journal) = &self.journal {
            journal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(&self.head, &self.counters);
        }
    }
}

/// A journaled append whose outcome has not been handed out. Dropping it writes its record, so a
/// caller that stops waiting still has the record written and committed.
#[derive(Debug)]
struct Unwritten {
    seq: u64,
    outcome: Arc<WriteOutcome>,
    inner: Arc<Inner>,
}

impl Unwritten {
    fn finish(self) -> Result<u64, AppendError> {
        if self.outcome.get().is_none() {
            self.inner.write_journal();
        }
        match self.outcome.get() {
            Some(Ok(())) => Ok(self.seq),
            Some(Err(error)) => Err(AppendError::Store(Arc::clone(error))),
            None => Err(AppendError::Closed),
        }
    }
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        if self.outcome.get().is_none() {
            self.inner.write_journal();
        }
    }
}

fn finish_if_sealed(path: &Path) -> Result<(), StoreError> {
    if !is_writable(path)? {
        return Ok(());
    }
    let conn = Connection::open(path).at(path)?;
    if read_seal(&conn, path)?.is_some() {
        finish_sealed(conn, path)?;
    }
    Ok(())
}

struct Active {
    conn: Connection,
    path: PathBuf,
    header: SegmentHeader,
}

/// State owned by the writer thread. Only this thread writes to the database, so `head_seq` and
/// `head_hash` are the truth about the segments and no read-modify-write race can fork the chain.
struct Writer {
    dir: PathBuf,
    full_sync: bool,
    /// Appends arrive chained and acknowledged through the journal ([`Command::Ingest`]).
    journaled: bool,
    /// Journal files whose last record is the seq given: each is deleted once that is committed.
    retired: Vec<(u64, PathBuf)>,
    /// Told the head seq after each commit.
    committed: watch::Sender<u64>,
    /// First and last seq of journaled records that arrived while [`MAX_PENDING`] were already
    /// waiting: they are only in the journal until [`Writer::read_back`] reads them.
    left_in_journal: Option<(u64, u64)>,
    max_batch: usize,
    /// See [`Config::seal_every_records`].
    seal_every: u64,
    /// `None` after a seal whose follow-up failed; the next command retries creating the segment.
    active: Option<Active>,
    segment_number: u32,
    head_seq: u64,
    head_hash: ChainHash,
    shared_head: Arc<Mutex<Anchor>>,
    counters: Arc<Counters>,
    /// Held for the writer's lifetime; the OS releases it even on kill -9.
    _lock: fs::File,
}

/// How long [`Writer::gather`] waits for more appends once several are queued: small next to
/// one fsync.
const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

/// How long the writer gathers journaled records before it commits them. Nobody waits for these
/// commits, so a long wait costs no latency; it makes batches of a hundred records and more under
/// load, which divides the cost of a commit (WAL frames, wal-index, checkpoints) among them. On
/// the benchmark machine, 10 ms rather than 3 ms doubled the batches and took about 1 µs of CPU
/// off each record. Queries wait for the commit (see `AuditLog::catch_up`), so a query waits
/// about that long, plus the commit, for a record acknowledged just before it.
const JOURNAL_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// Most journaled records the writer holds in memory while its commits fail. Later ones stay in
/// the journal only and are read back once the commits succeed again, so a long outage (a full
/// disk overnight, with every refused call still recorded) does not grow the server's memory.
const MAX_PENDING: usize = 65_536;

/// The pause before a failed commit of journaled records is tried again.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest a query waits for the writer to commit the records acknowledged before it.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A record waiting for the writer's next commit.
enum Pending {
    /// Acknowledged by that commit ([`Durability::Full`]).
    Waiting(Entry, oneshot::Sender<Result<u64, AppendError>>),
    /// Already acknowledged through the journal; the commit only stores it.
    Journaled(Chained),
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(self.max_batch);
        let mut appends: Vec<Pending> = Vec::with_capacity(self.max_batch);
        loop {
            if appends.is_empty() && self.left_in_journal.is_none() {
                let Some(first) = receiver.blocking_recv() else {
                    break;
                };
                // Everything that queued up during the previous commit goes into this one: that
                // is the group commit.
                commands.push(first);
                self.gather(&mut receiver, &mut commands);
            } else {
                // Journaled records whose commit failed are acknowledged already: they stay
                // queued, with whatever arrives meanwhile, until a commit succeeds (beyond
                // MAX_PENDING, in the journal only). A log that is shut down while failing leaves
                // them in the journal for the next open.
                std::thread::sleep(RETRY_PAUSE);
                if !drain(&mut receiver, &mut commands, MAX_PENDING) && commands.is_empty() {
                    // Shut down: commit what can be, then stop.
                    self.commit(&mut appends);
                    while appends.is_empty()
                        && self.left_in_journal.is_some()
                        && !self.counters.failing.load(Ordering::Relaxed)
                    {
                        self.read_back(&mut appends);
                        self.commit(&mut appends);
                    }
                    break;
                }
            }
            for command in commands.drain(..) {
                match command {
                    Command::Append { entry, ack } => appends.push(Pending::Waiting(entry, ack)),
                    Command::Ingest {
                        frames,
                        prev,
                        retire,
                        ..
                    } => self.ingest(frames, prev, retire, &mut appends),
                    Command::Seal { ack } => {
                        self.commit(&mut appends);
                        // The caller may have gone away; the seal stands regardless.
                        let _ = ack.send(self.seal());
                    }
                }
            }
            self.commit(&mut appends);
            if appends.is_empty() && self.left_in_journal.is_some() {
                self.read_back(&mut appends);
            }
        }
    }

    /// Takes journaled records into `appends`, or, beyond [`MAX_PENDING`], notes them as left in
    /// the journal. The frames were encoded here from valid entries; the commit decodes them in
    /// place and reports one that does not decode as corrupt.
    fn ingest(
        &mut self,
        frames: Vec<u8>,
        mut prev: ChainHash,
        retire: Option<PathBuf>,
        appends: &mut Vec<Pending>,
    ) {
        let buffer = Arc::new(frames);
        let (frames, _) = journal::split_frames(&buffer);
        let Some(last_seq) = frames.last().map(|frame| frame.seq) else {
            return;
        };
        if let Some(path) = retire {
            self.retired.push((last_seq, path));
        }
        for frame in frames {
            if let Some((_, last)) = &mut self.left_in_journal {
                *last = frame.seq;
                continue;
            }
            if appends.len() < MAX_PENDING {
                appends.push(Pending::Journaled(Chained {
                    seq: frame.seq,
                    buffer: Arc::clone(&buffer),
                    range: frame.start..frame.start + frame.canonical.len(),
                    prev,
                    hash: frame.hash,
                }));
            } else {
                self.left_in_journal = Some((frame.seq, frame.seq));
            }
            prev = frame.hash;
        }
    }

    /// Once the records before them are committed, reads the records left in the journal during
    /// an outage back into `appends`, at most [`MAX_PENDING`] at a time.
    fn read_back(&mut self, appends: &mut Vec<Pending>) {
        let Some((first, last)) = self.left_in_journal else {
            return;
        };
        let until = last.min(first.saturating_add(MAX_PENDING as u64 - 1));
        let read = self
            .read_journaled(until)
            .and_then(|records| match records.last() {
                Some(record) if record.seq == until && records[0].seq == first => Ok(records),
                _ => Err(StoreError::Corrupt {
                    path: self.dir.clone(),
                    reason: format!("the journal no longer holds records {first} to {until}"),
                }),
            });
        match read {
            Ok(records) => {
                appends.extend(records.into_iter().map(Pending::Journaled));
                self.left_in_journal = (until < last).then_some((until + 1, last));
            }
            Err(error) => {
                self.counters.failing.store(true, Ordering::Relaxed);
                tracing::error!(%error, "reading audit records back from the journal failed");
            }
        }
    }

    /// The journaled records after the head, up to seq `until`, checked against the chain. An
    /// incomplete last frame ends them (an append a crash interrupted); anything else that does
    /// not continue the chain is an error, because those records were acknowledged.
    fn read_journaled(&self, until: u64) -> Result<Vec<Chained>, StoreError> {
        let mut records = Vec::new();
        let (mut seq, mut prev) = (self.head_seq, self.head_hash);
        for (_, path) in journal::list_journals(&self.dir)? {
            if seq >= until {
                break;
            }
            let Some(contents) = journal::read_journal(&path)? else {
                continue;
            };
            let damaged = |reason: String| StoreError::Corrupt {
                path: path.clone(),
                reason,
            };
            for frame in contents.frames {
                if frame.seq <= seq {
                    continue;
                }
                if seq >= until {
                    break;
                }
                if frame.seq != seq + 1 {
                    return Err(damaged(format!(
                        "journal record {} follows record {seq}",
                        frame.seq
                    )));
                }
                if chain_hash_of_bytes(&prev, &frame.canonical) != frame.hash {
                    return Err(damaged(format!(
                        "journal record {} does not match its hash",
                        frame.seq
                    )));
                }
                decode_canonical(&frame.canonical)
                    .map_err(|reason| damaged(format!("journal record {}: {reason}", frame.seq)))?;
                let len = frame.canonical.len();
                records.push(Chained {
                    seq: frame.seq,
                    buffer: Arc::new(frame.canonical),
                    range: 0..len,
                    prev,
                    hash: frame.hash,
                });
                seq = frame.seq;
                prev = frame.hash;
            }
            if let Some(reason) = contents.damage
                && seq < until
            {
                return Err(damaged(reason));
            }
        }
        Ok(records)
    }

    /// Commits, before the log takes appends, the journaled records that a crash left out of the
    /// segments, and deletes the journal files. Refuses to open a journal whose records do not
    /// continue the chain: those were acknowledged, so silently dropping them would lose them.
    fn recover_journals(&mut self) -> Result<(), StoreError> {
        let journals = journal::list_journals(&self.dir)?;
        loop {
            let until = self.head_seq.saturating_add(MAX_PENDING as u64);
            let records = self.read_journaled(until)?;
            if records.is_empty() {
                break;
            }
            tracing::info!(
                first_seq = records[0].seq,
                records = records.len(),
                "committing audit records recovered from the journal"
            );
            let mut records = records.into_iter().map(Pending::Journaled).peekable();
            while records.peek().is_some() {
                let size = self.max_batch.min(self.records_until_seal());
                let batch: Vec<Pending> = records.by_ref().take(size).collect();
                let before = self.head_seq;
                self.write_batch(&batch)?;
                self.seal_if_due(before);
            }
        }
        for (_, path) in &journals {
            fs::remove_file(path).at(path)?;
        }
        Ok(())
    }

    /// Seals after a commit that reached a multiple of `seal_every` (batches are cut there, see
    /// [`Writer::commit`]), once the batch is acknowledged. A failed seal leaves the segment
    /// active, and the next multiple tries again.
    fn seal_if_due(&mut self, before: u64) {
        if self.seal_every == 0 || before / self.seal_every == self.head_seq / self.seal_every {
            return;
        }
        match self.seal() {
            Ok(Some(sealed)) => tracing::info!(
                segment = sealed.number,
                last_seq = sealed.last_seq,
                "audit segment sealed"
            ),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "sealing the audit segment failed"),
        }
    }

    /// Adds to `commands` what is queued now and then, for journaled appends, what arrives during
    /// [`JOURNAL_LINGER`]. For appends that wait for the commit, it waits one short [`LINGER`]
    /// only when more than one command is queued (appends are arriving concurrently): the
    /// appenders acknowledged by the previous commit are still being scheduled, and without the
    /// wait a commit would take only the first few of them and the rest would pay for a separate
    /// fsync. A lone command is committed at once, so an idle log adds no latency. One wait
    /// rather than several short ones, because each wait is two context switches: polling in
    /// 20 µs steps cost the audited server 3 to 13% of its calls per second.
    fn gather(&self, receiver: &mut mpsc::Receiver<Command>, commands: &mut Vec<Command>) {
        drain(receiver, commands, self.max_batch);
        let sealing = commands.iter().any(|c| matches!(c, Command::Seal { .. }));
        let linger = if self.journaled {
            JOURNAL_LINGER
        } else if records_in(commands) >= 2 {
            LINGER
        } else {
            return;
        };
        if sealing || records_in(commands) >= self.max_batch {
            return;
        }
        std::thread::sleep(linger);
        drain(receiver, commands, self.max_batch);
    }

    fn ensure_active(&mut self) -> Result<&mut Active, StoreError> {
        if self.active.is_none() {
            let header = SegmentHeader {
                number: self.segment_number + 1,
                first_seq: self.head_seq + 1,
                genesis: self.head_hash,
            };
            let path = create_segment(&self.dir, header)?;
            let conn = open_writer(&path, self.full_sync)?;
            self.segment_number = header.number;
            self.active = Some(Active { conn, path, header });
        }
        Ok(self.active.as_mut().unwrap_or_else(|| unreachable!()))
    }

    /// Commits `appends`, in more than one transaction when a seal falls inside them, so that
    /// every sealed segment ends exactly at a multiple of `seal_every` however the records were
    /// batched. Records whose commit failed and must be retried stay in `appends`.
    fn commit(&mut self, appends: &mut Vec<Pending>) {
        while !appends.is_empty() {
            let take = self.records_until_seal().min(appends.len());
            let rest = appends.split_off(take);
            self.commit_batch(appends);
            if !appends.is_empty() {
                appends.extend(rest);
                return;
            }
            *appends = rest;
        }
    }

    /// How many records the active segment takes before its seal is due.
    fn records_until_seal(&self) -> usize {
        if self.seal_every == 0 {
            return usize::MAX;
        }
        usize::try_from(self.seal_every - self.head_seq % self.seal_every).unwrap_or(usize::MAX)
    }

    fn commit_batch(&mut self, appends: &mut Vec<Pending>) {
        if appends.is_empty() {
            return;
        }
        match self.write_batch(appends) {
            Ok(first_seq) => {
                self.counters.failing.store(false, Ordering::Relaxed);
                let count = appends.len() as u64;
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters.records.fetch_add(count, Ordering::Relaxed);
                self.counters
                    .largest_batch
                    .fetch_max(count, Ordering::Relaxed);
                for (offset, pending) in (0u64..).zip(appends.drain(..)) {
                    if let Pending::Waiting(_, ack) = pending {
                        // A caller that stopped waiting still has its record committed.
                        let _ = ack.send(Ok(first_seq + offset));
                    }
                }
                self.remove_retired_journals();
                self.committed.send_replace(self.head_seq);
                self.seal_if_due(first_seq - 1);
            }
            Err(error) => {
                self.counters.failing.store(true, Ordering::Relaxed);
                tracing::error!(%error, "committing audit records failed");
                let error = Arc::new(error);
                // Journaled records stay for the retry; waiting appenders learn of the failure.
                let mut kept = Vec::new();
                for pending in appends.drain(..) {
                    match pending {
                        Pending::Journaled(record) => kept.push(Pending::Journaled(record)),
                        Pending::Waiting(_, ack) => {
                            let _ = ack.send(Err(AppendError::Store(Arc::clone(&error))));
                        }
                    }
                }
                *appends = kept;
            }
        }
    }

    fn remove_retired_journals(&mut self) {
        let head_seq = self.head_seq;
        self.retired.retain(|(last_seq, path)| {
            if *last_seq > head_seq {
                return true;
            }
            if let Err(error) = fs::remove_file(path) {
                tracing::warn!(
                    %error,
                    path = %path.display(),
                    "cannot remove a committed audit journal"
                );
            }
            false
        });
    }

    /// Writes the batch in one transaction; the head moves only once it is committed, so a failed
    /// batch leaves no gap in the chain.
    fn write_batch(&mut self, appends: &[Pending]) -> Result<u64, StoreError> {
        let (seq, prev) = self.insert_batch(appends)?;
        let first = self.head_seq + 1;
        self.head_seq = seq;
        self.head_hash = prev;
        if !self.journaled {
            *self
                .shared_head
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Anchor { seq, hash: prev };
        }
        Ok(first)
    }

    /// Inserts and commits the batch; returns the last seq and hash.
    fn insert_batch(&mut self, appends: &[Pending]) -> Result<(u64, ChainHash), StoreError> {
        let mut seq = self.head_seq;
        let mut prev = self.head_hash;
        let active = self.ensure_active()?;
        let path = active.path.clone();
        let tx = active.conn.transaction().at(&path)?;
        {
            let mut single = tx.prepare_cached(&INSERT_ONE).at(&path)?;
            let mut many = tx.prepare_cached(&INSERT_MANY).at(&path)?;
            let whole = appends.len() - appends.len() % ROWS_PER_INSERT;
            for (index, pending) in appends.iter().enumerate() {
                seq += 1;
                let (entry, hash) = match pending {
                    Pending::Waiting(entry, _) => (entry.view(), chain_hash(&prev, seq, entry)),
                    Pending::Journaled(record) => {
                        let corrupt = |reason: String| StoreError::Corrupt {
                            path: path.clone(),
                            reason,
                        };
                        if record.seq != seq || record.prev != prev {
                            return Err(corrupt(format!(
                                "journaled record {} does not continue the chain at {seq}",
                                record.seq
                            )));
                        }
                        let (_, view) = decode_view(record.canonical()).map_err(|reason| {
                            corrupt(format!("journaled record {seq}: {reason}"))
                        })?;
                        (view, record.hash)
                    }
                };
                if index < whole {
                    let row = index % ROWS_PER_INSERT;
                    bind_record(&mut many, row, seq, &entry, &prev, &hash).at(&path)?;
                    if row + 1 == ROWS_PER_INSERT {
                        many.raw_execute().at(&path)?;
                    }
                } else {
                    bind_record(&mut single, 0, seq, &entry, &prev, &hash).at(&path)?;
                    single.raw_execute().at(&path)?;
                }
                prev = hash;
            }
        }
        tx.commit().at(&path)?;
        Ok((seq, prev))
    }

    fn seal(&mut self) -> Result<Option<SealedSegment>, SealError> {
        let (head_seq, head_hash) = (self.head_seq, self.head_hash);
        let active = self.ensure_active()?;
        let first_seq = active.header.first_seq;
        if head_seq < first_seq {
            return Ok(None);
        }
        let seal = SealRow {
            last_seq: head_seq,
            record_count: head_seq - first_seq + 1,
            last_hash: head_hash,
        };
        segment::insert_seal(&mut active.conn, &active.path, &seal)?;
        let Active { conn, path, header } = self.active.take().unwrap_or_else(|| unreachable!());
        finish_sealed(conn, &path)?;
        self.ensure_active()?;
        Ok(Some(SealedSegment {
            number: header.number,
            path,
            first_seq,
            last_seq: head_seq,
            last_hash: head_hash,
        }))
    }
}

/// Moves queued commands into `commands` until they hold `limit` records; false once the queue
/// is closed and empty.
fn drain(
    receiver: &mut mpsc::Receiver<Command>,
    commands: &mut Vec<Command>,
    limit: usize,
) -> bool {
    let mut records = records_in(commands);
    while records < limit {
        match receiver.try_recv() {
            Ok(command) => {
                records += records_in(std::slice::from_ref(&command));
                commands.push(command);
            }
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// The records `commands` carry; a seal counts as one.
fn records_in(commands: &[Command]) -> usize {
    commands
        .iter()
        .map(|command| match command {
            Command::Ingest { count, .. } => *count,
            Command::Append { .. } | Command::Seal { .. } => 1,
        })
        .sum()
}
