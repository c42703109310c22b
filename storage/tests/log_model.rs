//! Property and fault-injection tests: random operations against a model,
//! over the simulated disk, with clean reopens and crashes. Each failure
//! prints the seed that reproduces it.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_storage::io::sim::{SimFaults, SimFileSystem, SimRng};
use sluice_storage::testing::block_on;
use sluice_storage::{BatchCache, Log, LogConfig, Offset, StorageError};

const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Sync,
    ReadAt(u16),
    TruncateAt(u16),
    AdvanceStartTo(u16),
    Retention { retention_bytes_kib: u8 },
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u8..40).prop_map(Op::Append),
        3 => Just(Op::Sync),
        3 => any::<u16>().prop_map(Op::ReadAt),
        1 => any::<u16>().prop_map(Op::TruncateAt),
        1 => any::<u16>().prop_map(Op::AdvanceStartTo),
        1 => (64u8..255).prop_map(|k| Op::Retention { retention_bytes_kib: k }),
        1 => Just(Op::Reopen),
        2 => Just(Op::Crash),
    ]
}

fn open(fs: &SimFileSystem, config: LogConfig) -> Log<SimFileSystem> {
    block_on(Log::open(fs.clone(), dir(), config, BatchCache::new(256 << 10), T0)).expect("open")
}

/// Picks an offset in the log's range from a random number.
fn pick(log: &Log<SimFileSystem>, r: u16) -> Offset {
    let (start, end) = (log.start_offset().0, log.end_offset().0);
    Offset(start + i64::from(r) % (end - start + 1))
}

fn run_ops(seed: u64, ops: &[Op]) {
    let mut fs = SimFileSystem::reliable(seed);
    let mut config = small_config();
    let mut log = open(&fs, config);
    let mut model = Model::default();
    let mut rng = SimRng::new(seed);
    for op in ops {
        match op {
            Op::Append(n) => block_on(async {
                for _ in 0..*n {
                    let b = random_batch(&mut rng, T0);
                    let info = log.append(b.clone(), T0).await.expect("append");
                    model.record(info.base_offset, &b);
                }
            }),
            Op::Sync => {
                block_on(log.sync()).expect("sync");
                assert_eq!(log.durable_offset(), log.end_offset());
            }
            Op::ReadAt(r) => {
                let from = pick(&log, *r);
                let got = block_on(read_bytes(&log, from, everything())).expect("read");
                let durable = log.durable_offset();
                for b in &got {
                    assert_eq!(
                        Some(b),
                        model.batches.get(&base_of(b)),
                        "read returned a batch not in the model"
                    );
                    assert!(base_of(b) < durable.0);
                }
                if let Some(first) = got.first() {
                    assert!(base_of(first) <= from.0 && from.0 <= base_of(first) + last_delta(first));
                }
            }
            Op::TruncateAt(r) => {
                let at = pick(&log, *r);
                block_on(log.truncate_to(at)).expect("truncate");
                assert!(log.end_offset() <= at.max(log.start_offset()));
                model.cut(log.end_offset());
            }
            Op::AdvanceStartTo(r) => {
                let to = pick(&log, *r);
                block_on(log.advance_start(to)).expect("advance");
                model.forget_below(log.start_offset());
            }
            Op::Retention { retention_bytes_kib } => {
                config.retention_bytes = i64::from(*retention_bytes_kib) << 10;
                log.set_config(config);
                block_on(log.enforce_retention(T0)).expect("retention");
                model.forget_below(log.start_offset());
            }
            Op::Reopen => {
                block_on(log.close()).expect("close");
                drop(log);
                log = open(&fs, config);
                block_on(assert_matches(&log, &model));
            }
            Op::Crash => {
                let durable = log.durable_offset();
                let start = log.start_offset();
                drop(log);
                fs = fs.crash();
                log = open(&fs, config);
                assert!(
                    log.end_offset() >= durable,
                    "durable data lost: end {} < durable {}",
                    log.end_offset(),
                    durable
                );
                assert_eq!(log.start_offset(), start);
                model.cut(log.end_offset());
                block_on(assert_matches(&log, &model));
            }
        }
        log.check_invariants();
    }
    block_on(log.sync()).expect("final sync");
    block_on(assert_matches(&log, &model));
}

proptest! {
    // PROPTEST_CASES raises the case count for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_model(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..40)) {
        run_ops(seed, &ops);
    }
}

/// One run of a workload under injected faults: short writes, EIO on
/// writes, reads and syncs, ENOSPC bursts, and crashes with torn, garbled
/// writes; retention deletes old segments, whose files new segments are
/// written into (over their old frames). Whatever the faults, a batch whose durability was confirmed is
/// read back byte-exact after every crash, and nothing else is ever served.
fn faulty_run(seed: u64) {
    let faults = SimFaults {
        short_write_ppm: 50_000,
        write_eio_ppm: 10_000,
        read_eio_ppm: 5_000,
        sync_eio_ppm: 20_000,
        torn_garbage: true,
        yield_ppm: 0,
        yields_max: 0,
    };
    let mut rng = SimRng::new(seed ^ 0x5eed);
    let mut fs = SimFileSystem::new(seed, SimFaults::default());
    let mut config = small_config();
    config.retention_bytes = 160 << 10;
    // Half the seeds write new segments into deleted ones' files.
    config.recycle_segments = seed.is_multiple_of(2);
    let mut model = Model::default();
    // Offsets below this were confirmed durable.
    let mut confirmed = Offset(0);
    let mut log = open(&fs, config);
    fs.set_faults(faults.clone());
    for round in 0..12 {
        block_on(async {
            for _ in 0..(20 + rng.below(60)) {
                match rng.below(13) {
                    0..=6 => {
                        let b = random_batch(&mut rng, T0);
                        match log.append(b.clone(), T0).await {
                            Ok(info) => model.record(info.base_offset, &b),
                            Err(e) => assert!(e.is_disk_fault(), "seed {seed}: {e}"),
                        }
                    }
                    7 | 8 => match log.sync().await {
                        Ok(durable) => confirmed = confirmed.max(durable),
                        Err(e) => assert!(e.is_disk_fault(), "seed {seed}: {e}"),
                    },
                    // The model keeps what retention deletes: reads and
                    // checks look from the log start.
                    9 => {
                        if let Err(e) = log.enforce_retention(T0).await {
                            assert!(e.is_disk_fault(), "seed {seed}: {e}");
                        }
                    }
                    10 => {
                        // DeleteRecords, somewhere in the durable part.
                        let (start, durable) = (log.start_offset().0, log.durable_offset().0);
                        let to = Offset(start + rng.below((durable - start) as u64 + 1) as i64);
                        if let Err(e) = log.advance_start(to).await {
                            assert!(e.is_disk_fault(), "seed {seed}: {e}");
                        }
                    }
                    _ => {
                        // Toggle a full disk.
                        let full = rng.below(2) == 0;
                        fs.set_capacity(full.then(|| fs.used_bytes() + rng.below(64 << 10)));
                    }
                }
                // Reads under faults fail or return model data, never junk.
                let from = Offset(log.start_offset().0);
                match read_bytes(&log, from, everything()).await {
                    Ok(got) => {
                        for b in &got {
                            assert_eq!(Some(b), model.batches.get(&base_of(b)), "seed {seed}: junk served");
                        }
                    }
                    Err(e) => assert!(e.is_disk_fault(), "seed {seed}: {e}"),
                }
            }
        });
        // Crash, then reopen on a disk that behaves, and check.
        let start_before = log.start_offset();
        drop(log);
        fs.set_capacity(None);
        fs = fs.crash();
        fs.set_faults(SimFaults::default());
        log = open(&fs, config);
        assert!(
            log.end_offset() >= confirmed,
            "seed {seed} round {round}: confirmed offset {confirmed} lost (end {})",
            log.end_offset()
        );
        // The start comes back to at most where it was (a failed
        // checkpoint's move may be lost): data at or past it never goes.
        assert!(
            log.start_offset() <= start_before,
            "seed {seed} round {round}: start {} past {start_before}",
            log.start_offset()
        );
        model.cut(log.end_offset());
        block_on(assert_matches(&log, &model));
        confirmed = log.end_offset();
        fs.set_faults(faults.clone());
    }
}

#[test]
fn confirmed_batches_survive_faults_and_crashes_across_seeds() {
    // SLUICE_FAULT_SEED=n replays one seed with logs; SLUICE_FAULT_SEEDS=n
    // runs seeds 0..n (default 400).
    if let Some(seed) = std::env::var("SLUICE_FAULT_SEED").ok().and_then(|s| s.parse().ok()) {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("debug")
            .try_init();
        faulty_run(seed);
        return;
    }
    let seeds: u64 = std::env::var("SLUICE_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    for seed in 0..seeds {
        faulty_run(seed);
    }
}

/// Media corruption after the fact: a flipped bit anywhere in the data is
/// either cut by recovery or reported by reads; it is never served.
#[test]
fn a_flipped_bit_is_never_served() {
    for seed in 0..60u64 {
        let fs = SimFileSystem::reliable(seed);
        let config = small_config();
        let mut model = Model::default();
        let mut rng = SimRng::new(seed);
        {
            let log = open(&fs, config);
            block_on(async {
                for _ in 0..300 {
                    let b = random_batch(&mut rng, T0);
                    let info = log.append(b.clone(), T0).await.unwrap();
                    model.record(info.base_offset, &b);
                }
                log.close().await.unwrap();
            });
        }
        let segments: Vec<_> = fs
            .file_names()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        let victim = &segments[rng.below(segments.len() as u64) as usize];
        let len = fs.contents(victim).unwrap().len() as u64;
        fs.flip_bit(victim, rng.below(len), rng.below(8) as u8).unwrap();
        let log = open(&fs, config);
        block_on(async {
            let mut next = log.start_offset();
            while next < log.end_offset() {
                match read_bytes(&log, next, everything()).await {
                    Ok(got) => {
                        let Some(last) = got.last() else { break };
                        for b in &got {
                            assert_eq!(
                                Some(b),
                                model.batches.get(&base_of(b)),
                                "seed {seed}: corrupt batch served"
                            );
                        }
                        next = Offset(base_of(last) + last_delta(last) + 1);
                    }
                    Err(StorageError::Corrupt { .. }) => {
                        // Skip past the damaged batch by asking for the next one.
                        let (base, b) = model.batches.range(..=next.0).next_back().unwrap();
                        next = Offset(base + last_delta(b) + 1);
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
        });
    }
}

/// Appenders that each wait for their batches to be durable, beside a
/// background flusher, under faults, on a disk whose writes and syncs yield
/// at random so that the tasks interleave (appends land while a sync's
/// writes are in flight; waiters and the flusher share syncs), some waits
/// given up part way, then a crash at a random point. Every batch whose
/// durability was confirmed is read back byte-exact.
///
/// Before syncs outlived their callers, a wait given up mid-sync left a
/// hole that later syncs called durable: seed 0 read a corrupt frame. It
/// also caught both mistakes planted while trying to overlap one sync's
/// writes with the previous fdatasync: a job confirmed without its own
/// sync, and a failed job's follower not written again.
fn concurrent_faulty_run(seed: u64) -> u64 {
    const APPENDERS: u64 = 4;
    const BATCHES_PER_APPENDER: usize = 40;
    let faults = SimFaults {
        short_write_ppm: 20_000,
        write_eio_ppm: 5_000,
        sync_eio_ppm: 20_000,
        torn_garbage: true,
        yield_ppm: 400_000,
        yields_max: 8,
        ..SimFaults::default()
    };
    // One-page buffers, so that a few appends fill buffers the flusher
    // writes ahead of its next sync.
    let mut config = small_config();
    config.appender.chunk_bytes = sluice_storage::io::ALIGN;
    let fs = SimFileSystem::new(seed, SimFaults::default());
    let log = open(&fs, config);
    fs.set_faults(faults);
    // The batches confirmed durable, with their assigned offsets.
    let confirmed = std::cell::RefCell::new(Model::default());
    block_on(async {
        let flusher = async {
            // A failed sync ends the flusher; the broker starts it again.
            while log.flush_until_closed().await.is_err() {}
        };
        let appenders = (0..APPENDERS).map(|a| {
            let (log, confirmed) = (&log, &confirmed);
            async move {
                let mut rng = SimRng::new(seed ^ (a << 32) ^ 0xa99e);
                for _ in 0..BATCHES_PER_APPENDER {
                    let b = random_batch(&mut rng, T0);
                    let info = match log.append(b.clone(), T0).await {
                        Ok(info) => info,
                        Err(e) => {
                            assert!(e.is_disk_fault(), "seed {seed}: {e}");
                            continue;
                        }
                    };
                    // Some waits are given up part way, as the broker's are
                    // when a request times out or its client goes away: a
                    // sync they were running must still come out whole.
                    let patience = match rng.below(4) {
                        0 => Some(rng.below(6)),
                        _ => None,
                    };
                    let wait = async { Some(log.wait_durable(info.last_offset.plus(1)).await) };
                    let outcome = match patience {
                        None => wait.await,
                        Some(polls) => {
                            futures_lite::future::or(wait, async {
                                for _ in 0..polls {
                                    futures_lite::future::yield_now().await;
                                }
                                None
                            })
                            .await
                        }
                    };
                    match outcome {
                        Some(Ok(())) => confirmed.borrow_mut().record(info.base_offset, &b),
                        Some(Err(e)) => assert!(e.is_disk_fault(), "seed {seed}: {e}"),
                        None => {}
                    }
                }
            }
        });
        let work = async {
            sluice_storage::local_sync::join_bounded(appenders.collect(), APPENDERS as usize).await;
        };
        // The crash comes at a random point, or as the last confirmation
        // arrives: no close, no final sync.
        let crash_after_polls = SimRng::new(seed ^ 0xc4a5).below(3_000);
        let crash = async {
            for _ in 0..crash_after_polls {
                futures_lite::future::yield_now().await;
            }
        };
        let flusher = async {
            flusher.await;
            unreachable!("the log is never closed")
        };
        futures_lite::future::or(work, futures_lite::future::or(crash, flusher)).await;
    });
    let writes_ahead = log.stats().writes_ahead;
    drop(log);
    let fs = fs.crash();
    fs.set_faults(SimFaults::default());
    let log = open(&fs, config);
    let confirmed = confirmed.into_inner();
    block_on(async {
        for (base, batch) in &confirmed.batches {
            let got = read_bytes(&log, Offset(*base), everything()).await.unwrap();
            assert_eq!(got.first(), Some(batch), "seed {seed}: confirmed batch at {base} lost");
        }
    });
    writes_ahead
}

#[test]
fn confirmed_batches_survive_concurrent_appenders_faults_and_crashes() {
    let mut runs_with_writes_ahead = 0;
    for seed in 0..200u64 {
        runs_with_writes_ahead += u32::from(concurrent_faulty_run(seed) > 0);
    }
    // The flusher wrote buffers ahead of their syncs in most runs, so the
    // crashes and faults above met writes ahead in flight.
    assert!(
        runs_with_writes_ahead > 100,
        "{runs_with_writes_ahead} of 200 runs wrote ahead"
    );
}

/// A truncation cut short by a crash at a random point (its disk yields at
/// random, so every await inside it is a possible crash point). Reopened,
/// the log holds the whole model (the truncation undone) or exactly the
/// model below the cut, never anything else: no truncated batch comes back
/// once the truncation returned, no batch below the cut is lost, and every
/// batch the log claims reads back.
fn truncation_crash_run(seed: u64) -> bool {
    let mut rng = SimRng::new(seed ^ 0x7c07);
    let config = small_config();
    let fs = SimFileSystem::reliable(seed);
    let log = open(&fs, config);
    let mut model = Model::default();
    block_on(async {
        for _ in 0..(150 + rng.below(200)) {
            let b = random_batch(&mut rng, T0);
            let info = log.append(b.clone(), T0).await.unwrap();
            model.record(info.base_offset, &b);
        }
        log.sync().await.unwrap();
    });
    // Cut at a batch's base; half the time the last batch of a segment, so
    // that the cut and the segment's old end share a page.
    let bases: Vec<i64> = model.batches.keys().copied().collect();
    let segment_bases = segment_bases(&fs);
    let cut = if rng.below(2) == 0 && segment_bases.len() > 1 {
        let next = segment_bases[1 + rng.below(segment_bases.len() as u64 - 1) as usize];
        *bases.iter().rev().find(|b| **b < next).unwrap()
    } else {
        bases[rng.below(bases.len() as u64) as usize]
    };
    fs.set_faults(SimFaults {
        yield_ppm: 500_000,
        yields_max: 4,
        ..SimFaults::default()
    });
    let crash_after_polls = rng.below(200);
    let finished = block_on(async {
        let truncate = async {
            log.truncate_to(Offset(cut)).await.unwrap();
            true
        };
        let crash = async {
            for _ in 0..crash_after_polls {
                futures_lite::future::yield_now().await;
            }
            false
        };
        futures_lite::future::or(truncate, crash).await
    });
    // Abandoned part way, the truncation leaves the log as it was, or cut,
    // or closed: never serving what its files no longer hold.
    fs.set_faults(SimFaults::default());
    let served = block_on(async {
        let mut out = Vec::new();
        let mut next = log.start_offset();
        loop {
            match read_bytes(&log, next, everything()).await {
                Ok(got) if got.is_empty() => return Some(out),
                Ok(got) => {
                    let last = got.last().unwrap();
                    next = Offset(base_of(last) + last_delta(last) + 1);
                    out.extend(got);
                }
                Err(StorageError::Closed) => return None,
                Err(e) => panic!("seed {seed}: read after an abandoned truncation: {e}"),
            }
        }
    });
    match served {
        Some(served) => {
            let mut cut_model = model.clone();
            cut_model.cut(Offset(cut));
            let matches = |m: &Model| served.iter().eq(m.batches.values());
            assert!(
                matches(&cut_model) || (!finished && matches(&model)),
                "seed {seed}: served neither the log nor its cut (finished: {finished})"
            );
        }
        None => {
            // Closed, the log writes nothing more: not a checkpoint of the
            // state it had before the cut either.
            let start = log.start_offset();
            for result in [
                block_on(log.advance_start(start.plus(1))).map(|_| ()),
                block_on(log.enforce_retention(T0)).map(|_| ()),
            ] {
                assert!(matches!(result, Err(StorageError::Closed)), "seed {seed}: {result:?}");
            }
        }
    }
    drop(log);
    let fs = fs.crash();
    fs.set_faults(SimFaults::default());
    let log = open(&fs, config);
    let whole_end = model.end();
    let got = block_on(read_all(&log));
    let end = log.end_offset();
    assert!(
        end == Offset(cut) || (end == whole_end && !finished),
        "seed {seed}: end {end} after a truncation to {cut} (finished: {finished}) of a log ending at {whole_end}"
    );
    model.cut(end);
    let expected: Vec<&bytes::Bytes> = model.batches.values().collect();
    assert_eq!(got.len(), expected.len(), "seed {seed}: batch count");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g, e, "seed {seed}: batch at {} differs", base_of(e));
    }
    finished
}

#[test]
fn a_truncation_cut_short_by_a_crash_leaves_the_log_whole_or_cut() {
    let mut finished = 0;
    for seed in 0..300u64 {
        finished += u32::from(truncation_crash_run(seed));
    }
    // Both outcomes were met: crashes inside the truncation and after it.
    assert!((30..270).contains(&finished), "{finished} of 300 truncations finished");
}
