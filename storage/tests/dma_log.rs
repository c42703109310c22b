//! The log on the real disk, through glommio direct I/O: behaviour, group
//! commit, and a crash test that SIGKILLs a child process mid-append.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use glommio::LocalExecutorBuilder;
use sluice_storage::batch::{build_batch, write_crc};
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::io::sim::SimRng;
use sluice_storage::{BatchCache, Log, LogConfig, Offset};

const T0: i64 = 1_700_000_000_000;

fn run<F, Fut>(f: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future + 'static,
    Fut::Output: Send + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("executor thread")
}

fn config() -> LogConfig {
    let mut c = small_config();
    c.segment_bytes = 256 << 10;
    // Applied when `enforce_retention` runs: the crash test's child runs it.
    c.retention_bytes = 1 << 20;
    c
}

async fn open(dir: &Path) -> Log<DmaFileSystem> {
    Log::open(
        DmaFileSystem::new(),
        dir.to_path_buf(),
        config(),
        BatchCache::new(1 << 20),
        T0,
    )
    .await
    .expect("open")
}

#[test]
fn appends_survive_close_and_reopen_on_the_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    run(move || async move {
        let mut model = Model::default();
        let mut rng = SimRng::new(1);
        {
            let log = open(&dir).await;
            for _ in 0..2000 {
                let b = random_batch(&mut rng, T0);
                let info = log.append(b.clone(), T0).await.unwrap();
                model.record(info.base_offset, &b);
            }
            log.sync().await.unwrap();
            assert_matches(&log, &model).await;
            assert!(log.stats().segment_count > 3);
            log.close().await.unwrap();
        }
        // A new cache: every read now comes off the disk.
        let log = open(&dir).await;
        assert_matches(&log, &model).await;
        let hit = log.find_by_timestamp(T0).await.unwrap().unwrap();
        assert_eq!(hit.base_offset, Offset(0));
    });
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    run(move || async move {
        let log = Rc::new(open(&dir).await);
        let tasks = 64;
        let per_task = 20;
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..per_task {
                        let b = Bytes::from(build_batch(1, 100 + t + i, T0));
                        let info = log.append(b, T0).await.unwrap();
                        log.wait_durable(info.last_offset.plus(1)).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await;
        }
        let appends = (tasks * per_task) as u64;
        let syncs = log.stats().sync_count;
        assert_eq!(log.durable_offset(), Offset(appends as i64));
        // Every append waited for durability, yet syncs were shared.
        assert!(syncs < appends / 4, "{syncs} syncs for {appends} durable appends");
    });
}

/// The child half of the crash test: appends forever from several tasks,
/// printing each offset once it is durable, until killed; meanwhile
/// retention deletes old segments, whose files later segments reuse.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SLUICE_CRASH_CHILD_DIR") else {
        return; // Only runs when the crash test starts it.
    };
    let seed: u64 = std::env::var("SLUICE_CRASH_CHILD_SEED").unwrap().parse().unwrap();
    run(move || async move {
        let log = Rc::new(open(Path::new(&dir)).await);
        let stdout = Rc::new(std::cell::RefCell::new(std::io::stdout()));
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let log = log.clone();
                let stdout = stdout.clone();
                glommio::spawn_local(async move {
                    for i in 0.. {
                        // Content is a function of the offset it lands at,
                        // so the parent can check it without being told.
                        let b = batch_for(seed ^ (t << 32) ^ i);
                        let info = log.append(b.clone(), T0).await.unwrap();
                        log.wait_durable(info.last_offset.plus(1)).await.unwrap();
                        let mut out = stdout.borrow_mut();
                        writeln!(out, "{} {}", info.base_offset.0, seed ^ (t << 32) ^ i).unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        let retention = glommio::spawn_local({
            let log = log.clone();
            async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    log.enforce_retention(T0).await.unwrap();
                }
            }
        });
        for t in tasks {
            t.await;
        }
        retention.await;
    });
}

fn batch_for(key: u64) -> Bytes {
    let mut rng = SimRng::new(key);
    let records = 1 + rng.below(5) as i32;
    let mut b = build_batch(records, 16 + rng.below(3000) as usize, T0);
    let n = b.len();
    b[n - 9..n - 1].copy_from_slice(&key.to_le_bytes());
    write_crc(&mut b);
    Bytes::from(b)
}

#[test]
fn batches_reported_durable_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("t-0");
    let mut rng = SimRng::new(0xC0FFEE);
    // base offset -> key of the batch the child reported durable there
    let mut durable: std::collections::BTreeMap<i64, u64> = Default::default();
    let rounds = std::env::var("SLUICE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    // Whether a kill ever left a deleted segment's file kept for reuse.
    let mut kept_files_seen = false;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
            .env("SLUICE_CRASH_CHILD_DIR", &dir)
            .env("SLUICE_CRASH_CHILD_SEED", (round as u64 * 1_000_003).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let (Ok(base), Ok(key)) = (a.parse::<i64>(), b.parse::<u64>())
                    && tx.send((base, key)).is_err()
                {
                    break;
                }
            }
        });
        // Wait for the child to get going, then kill it at a random moment.
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("child never reported");
        durable.insert(first.0, first.1);
        let until = Instant::now() + Duration::from_millis(20 + rng.below(400));
        while Instant::now() < until {
            if let Ok((base, key)) = rx.recv_timeout(Duration::from_millis(5)) {
                durable.insert(base, key);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        while let Ok((base, key)) = rx.try_recv() {
            durable.insert(base, key);
        }
        kept_files_seen |= std::fs::read_dir(&dir)
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "free"));
        // Reopen: every batch reported durable is there, byte for byte,
        // unless retention deleted it.
        let dir2 = dir.clone();
        let expected = durable.clone();
        let end = run(move || async move {
            let log = open(&dir2).await;
            let start = log.start_offset().0;
            let stored: std::collections::HashMap<i64, Bytes> =
                read_all(&log).await.into_iter().map(|b| (base_of(&b), b)).collect();
            let kept = expected
                .iter()
                .filter(|(base, key)| **base + last_delta(&batch_for(**key)) >= start);
            for (base, key) in kept {
                let mut want = batch_for(*key).to_vec();
                sluice_storage::batch::set_base_offset(&mut want, Offset(*base));
                assert_eq!(
                    stored.get(base).map(|b| &b[..]),
                    Some(&want[..]),
                    "batch at {base} lost or changed"
                );
            }
            log.end_offset()
        });
        let last = durable
            .iter()
            .next_back()
            .map(|(b, k)| b + last_delta(&batch_for(*k)) + 1);
        assert!(
            Some(end.0) >= last,
            "round {round}: end {end} below last durable {last:?}"
        );
        // Offsets past the recovered end may be reused by the next round.
        durable.retain(|base, _| *base < end.0);
    }
    assert!(kept_files_seen, "retention never kept a file to reuse");
}
