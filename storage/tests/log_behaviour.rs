//! The log's behaviour over the simulated disk: append, read, roll,
//! retention, truncation, lookups, reopen.

mod common;

use bytes::Bytes;
use common::*;
use sluice_storage::batch::build_batch;
use sluice_storage::frame::FRAME_HEADER_BYTES;
use sluice_storage::io::sim::{SimFaults, SimFileSystem, SimRng};
use sluice_storage::testing::block_on;
use sluice_storage::{BatchCache, Log, LogConfig, Offset, ReadLimits, StorageError};

const T0: i64 = 1_700_000_000_000;

fn open(fs: &SimFileSystem, config: LogConfig, now_ms: i64) -> Log<SimFileSystem> {
    block_on(Log::open(fs.clone(), dir(), config, BatchCache::new(1 << 20), now_ms)).expect("open")
}

/// A log of the default config with a batch cache of `cache_bytes` (0: every
/// read goes to the disk).
fn open_with_cache(fs: &SimFileSystem, cache_bytes: usize) -> Log<SimFileSystem> {
    block_on(Log::open(
        fs.clone(),
        dir(),
        LogConfig::default(),
        BatchCache::new(cache_bytes),
        T0,
    ))
    .expect("open")
}

/// Appends `count` batches of `records` records of 1000 bytes, then syncs.
async fn append_synced(log: &Log<SimFileSystem>, count: usize, records: i32) {
    for _ in 0..count {
        log.append(Bytes::from(build_batch(records, 1000, T0)), T0)
            .await
            .unwrap();
    }
    log.sync().await.unwrap();
}

/// Appends `count` random batches at timestamp `ts`, recording them.
fn fill(log: &Log<SimFileSystem>, model: &mut Model, rng: &mut SimRng, count: usize, ts: i64) {
    block_on(async {
        for _ in 0..count {
            let b = random_batch(rng, ts);
            let info = log.append(b.clone(), ts).await.expect("append");
            model.record(info.base_offset, &b);
        }
        log.sync().await.expect("sync");
    });
}

#[test]
fn appends_assign_contiguous_offsets_and_read_back_byte_exact() {
    let fs = SimFileSystem::reliable(1);
    let log = open(&fs, small_config(), T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(1);
    block_on(async {
        let mut expected_base = 0;
        for _ in 0..300 {
            let b = random_batch(&mut rng, T0);
            let info = log.append(b.clone(), T0).await.unwrap();
            assert_eq!(info.base_offset, Offset(expected_base));
            assert_eq!(info.last_offset, Offset(expected_base + last_delta(&b)));
            expected_base = info.last_offset.0 + 1;
            model.record(info.base_offset, &b);
        }
        assert_eq!(log.sync().await.unwrap(), Offset(expected_base));
        assert_matches(&log, &model).await;
        log.check_invariants();
        assert!(log.stats().segment_count > 3, "small segments should have rolled");
    });
}

#[test]
fn a_read_from_inside_a_batch_returns_that_whole_batch() {
    let fs = SimFileSystem::reliable(2);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        let a = Bytes::from(build_batch(5, 20, T0));
        let b = Bytes::from(build_batch(3, 20, T0));
        log.append(a, T0).await.unwrap();
        log.append(b, T0).await.unwrap();
        log.sync().await.unwrap();
        for from in 0..5 {
            let got = read_bytes(&log, Offset(from), everything()).await.unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(base_of(&got[0]), 0);
        }
        let got = read_bytes(&log, Offset(6), everything()).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(base_of(&got[0]), 5);
    });
}

#[test]
fn the_end_reads_empty_and_outside_the_log_is_out_of_range() {
    let fs = SimFileSystem::reliable(3);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        log.append(Bytes::from(build_batch(2, 5, T0)), T0).await.unwrap();
        log.sync().await.unwrap();
        assert!(read_bytes(&log, Offset(2), everything()).await.unwrap().is_empty());
        assert!(matches!(
            read_bytes(&log, Offset(3), everything()).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.advance_start(Offset(1)).await.unwrap();
        assert!(matches!(
            read_bytes(&log, Offset(0), everything()).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Offset 1 is inside the first batch: it is still served whole.
        assert_eq!(read_bytes(&log, Offset(1), everything()).await.unwrap().len(), 1);
    });
}

#[test]
fn reads_never_pass_the_durable_offset() {
    let fs = SimFileSystem::reliable(4);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        log.append(Bytes::from(build_batch(1, 5, T0)), T0).await.unwrap();
        log.sync().await.unwrap();
        log.append(Bytes::from(build_batch(1, 5, T0)), T0).await.unwrap();
        assert_eq!(log.durable_offset(), Offset(1));
        assert_eq!(log.end_offset(), Offset(2));
        assert_eq!(read_bytes(&log, Offset(0), everything()).await.unwrap().len(), 1);
        assert!(read_bytes(&log, Offset(1), everything()).await.unwrap().is_empty());
        log.wait_durable(Offset(2)).await.unwrap();
        assert_eq!(read_bytes(&log, Offset(1), everything()).await.unwrap().len(), 1);
    });
}

#[test]
fn byte_limits_are_respected_but_one_batch_always_fits_when_asked() {
    let fs = SimFileSystem::reliable(5);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        append_synced(&log, 10, 1).await;
        let one_size = read_bytes(&log, Offset(0), everything()).await.unwrap()[0].len();
        let limits = |bytes_max, min_one| ReadLimits {
            bytes_max,
            upper: Offset(100),
            min_one,
        };
        assert_eq!(
            read_bytes(&log, Offset(0), limits(one_size * 3, true))
                .await
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            read_bytes(&log, Offset(0), limits(one_size * 3 - 1, true))
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(read_bytes(&log, Offset(0), limits(10, true)).await.unwrap().len(), 1);
        assert!(read_bytes(&log, Offset(0), limits(10, false)).await.unwrap().is_empty());
        let upper = ReadLimits {
            bytes_max: usize::MAX / 2,
            upper: Offset(4),
            min_one: true,
        };
        assert_eq!(read_bytes(&log, Offset(0), upper).await.unwrap().len(), 4);
    });
}

#[test]
fn segments_roll_by_size_and_by_age() {
    let fs = SimFileSystem::reliable(6);
    let mut config = small_config();
    config.segment_ms = 60_000;
    let log = open(&fs, config, T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(6);
    fill(&log, &mut model, &mut rng, 10, T0);
    assert_eq!(log.stats().segment_count, 1);
    // Age: the next append after segment.ms rolls.
    fill(&log, &mut model, &mut rng, 1, T0 + 60_000);
    assert_eq!(log.stats().segment_count, 2);
    // Size: 64 KiB segments fill up.
    fill(&log, &mut model, &mut rng, 400, T0 + 60_000);
    let stats = log.stats();
    assert!(stats.segment_count > 4);
    assert!(stats.size_bytes / (stats.segment_count as u64 - 1) <= 64 << 10);
    block_on(assert_matches(&log, &model));
    log.check_invariants();
}

#[test]
fn retention_by_size_deletes_oldest_segments_and_moves_the_start() {
    let (fs, _, log, mut model) = filled_past_retention(7, true);
    let before = log.stats();
    let deleted = block_on(log.enforce_retention(T0)).unwrap();
    let after = log.stats();
    assert!(deleted > 0);
    assert_eq!(after.segment_count, before.segment_count - deleted);
    assert!(after.size_bytes <= (150 << 10) + (64 << 10));
    assert!(after.size_bytes >= 150 << 10 || after.segment_count == 1);
    assert!(after.start_offset > Offset(0));
    model.forget_below(after.start_offset);
    block_on(assert_matches(&log, &model));
    // Deleted segment files are gone from the disk.
    let logs = fs
        .file_names()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .count();
    assert_eq!(logs, after.segment_count);
    assert!(
        fs.file_names()
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".deleted")),
        "renamed away, then unlinked before retention returns"
    );
}

#[test]
fn deleted_files_a_crash_kept_from_being_unlinked_are_removed_on_open() {
    let (fs, log, model, _) = filled(24, small_config(), 50);
    // As `enforce_retention` leaves a segment's files between its renames
    // and its unlinks (outside the log's locks).
    let stray = dir().join("00000000000000000000.log.deleted");
    block_on(sluice_storage::io::write_file_atomic(&fs, &stray, b"old")).unwrap();
    drop(log);
    let crashed = fs.crash();
    let log = open(&crashed, small_config(), T0);
    assert!(!crashed.file_names().contains(&stray));
    block_on(assert_matches(&log, &model));
}

#[test]
fn retention_by_time_uses_the_newest_timestamp_and_can_empty_the_log() {
    let fs = SimFileSystem::reliable(8);
    let mut config = small_config();
    config.retention_ms = 1000;
    let log = open(&fs, config, T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(8);
    fill(&log, &mut model, &mut rng, 300, T0);
    fill(&log, &mut model, &mut rng, 300, T0 + 5000);
    // At T0 + 5500 the old batches have expired, the new ones have not.
    let deleted = block_on(log.enforce_retention(T0 + 5500)).unwrap();
    assert!(deleted > 0);
    let start = log.start_offset();
    assert!(start > Offset(0));
    model.forget_below(start);
    block_on(assert_matches(&log, &model));
    // Much later everything has expired, the active segment too.
    block_on(log.enforce_retention(T0 + 100_000)).unwrap();
    assert_eq!(log.start_offset(), log.end_offset());
    assert_eq!(log.stats().segment_count, 1);
    assert!(block_on(read_all(&log)).is_empty());
    // And the log goes on from where it was.
    let end = log.end_offset();
    let info = block_on(log.append(Bytes::from(build_batch(1, 1, T0 + 100_000)), T0 + 100_000)).unwrap();
    assert_eq!(info.base_offset, end);
}

#[test]
fn truncation_drops_the_suffix_across_segments_and_appends_continue() {
    let fs = SimFileSystem::reliable(9);
    let log = open(&fs, small_config(), T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(9);
    fill(&log, &mut model, &mut rng, 500, T0);
    // Cut at a batch boundary somewhere in an early segment.
    let cut = *model.batches.keys().nth(120).unwrap();
    block_on(log.truncate_to(Offset(cut))).unwrap();
    model.cut(Offset(cut));
    assert_eq!(log.end_offset(), Offset(cut));
    block_on(assert_matches(&log, &model));
    fill(&log, &mut model, &mut rng, 50, T0);
    block_on(assert_matches(&log, &model));
    log.check_invariants();
    // The truncation is durable: it survives a crash.
    let crashed = fs.crash();
    let log = open(&crashed, small_config(), T0);
    block_on(assert_matches(&log, &model));
}

#[test]
fn truncation_inside_a_batch_removes_that_whole_batch() {
    let fs = SimFileSystem::reliable(10);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        log.append(Bytes::from(build_batch(4, 5, T0)), T0).await.unwrap();
        log.append(Bytes::from(build_batch(4, 5, T0)), T0).await.unwrap();
        log.sync().await.unwrap();
        log.truncate_to(Offset(6)).await.unwrap();
        assert_eq!(log.end_offset(), Offset(4));
        let info = log.append(Bytes::from(build_batch(1, 5, T0)), T0).await.unwrap();
        assert_eq!(info.base_offset, Offset(4));
    });
}

#[test]
fn advancing_the_start_deletes_whole_segments_below_it() {
    let fs = SimFileSystem::reliable(11);
    let log = open(&fs, small_config(), T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(11);
    fill(&log, &mut model, &mut rng, 400, T0);
    let segments = log.stats().segment_count;
    let target = Offset(model.end().0 / 2);
    assert_eq!(block_on(log.advance_start(target)).unwrap(), target);
    assert!(log.stats().segment_count < segments);
    model.forget_below(target);
    block_on(assert_matches(&log, &model));
    assert!(matches!(
        block_on(log.advance_start(Offset(log.end_offset().0 + 1))),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // The start survives a crash.
    let crashed = fs.crash();
    let log = open(&crashed, small_config(), T0);
    assert_eq!(log.start_offset(), target);
}

#[test]
fn timestamp_lookup_finds_the_first_batch_at_or_after() {
    let fs = SimFileSystem::reliable(12);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        // Batch i has timestamp T0 + 10 * i, one record each.
        for i in 0..800 {
            log.append(Bytes::from(build_batch(1, 100, T0 + 10 * i)), T0)
                .await
                .unwrap();
        }
        log.sync().await.unwrap();
        for (ts, expected) in [(T0 - 5, 0), (T0, 0), (T0 + 1, 1), (T0 + 4000, 400), (T0 + 7990, 799)] {
            let hit = log.find_by_timestamp(ts).await.unwrap().expect("a hit");
            assert_eq!(hit.base_offset, Offset(expected), "timestamp {ts}");
            assert_eq!(hit.batch.base_offset().0, expected);
        }
        assert!(log.find_by_timestamp(T0 + 7991).await.unwrap().is_none());
    });
}

#[test]
fn reopening_after_close_keeps_everything_and_reads_little() {
    let fs = SimFileSystem::reliable(13);
    let mut model = Model::default();
    let mut rng = SimRng::new(13);
    {
        let log = open(&fs, small_config(), T0);
        fill(&log, &mut model, &mut rng, 1000, T0);
        block_on(log.close()).unwrap();
        assert!(matches!(
            block_on(log.append(Bytes::from(build_batch(1, 1, T0)), T0)),
            Err(StorageError::Closed)
        ));
    }
    let read_before = fs.bytes_read();
    let log = open(&fs, small_config(), T0);
    let opening_read = fs.bytes_read() - read_before;
    let size = log.stats().size_bytes;
    // A clean reopen reads indexes and the checkpoint, not the segments.
    assert!(opening_read < size / 4, "open read {opening_read} of {size} bytes");
    block_on(assert_matches(&log, &model));
}

#[test]
fn recovery_after_a_crash_scans_only_what_followed_the_checkpoint() {
    let fs = SimFileSystem::reliable(14);
    let mut config = small_config();
    config.segment_bytes = 4 << 20;
    config.checkpoint_interval_bytes = 256 << 10;
    config.write_buffer_bytes_max = 1 << 20;
    let mut model = Model::default();
    let mut rng = SimRng::new(14);
    let log = open(&fs, config, T0);
    fill(&log, &mut model, &mut rng, 6000, T0);
    let size = log.stats().size_bytes;
    assert!(size > 2 << 20);
    let crashed = fs.crash();
    let log = open(&crashed, config, T0);
    let opening_read = crashed.bytes_read();
    // At most one checkpoint interval, plus chunk rounding and indexes.
    assert!(
        opening_read < (256 << 10) + (2 << 20) / 2,
        "recovery read {opening_read} bytes of a {size}-byte log"
    );
    block_on(assert_matches(&log, &model));
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt_from_the_log() {
    let fs = SimFileSystem::reliable(15);
    let mut model = Model::default();
    let mut rng = SimRng::new(15);
    {
        let log = open(&fs, small_config(), T0);
        fill(&log, &mut model, &mut rng, 600, T0);
        block_on(log.close()).unwrap();
    }
    let indexes: Vec<_> = fs
        .file_names()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "index" || e == "timeindex"))
        .collect();
    assert!(indexes.len() >= 4);
    // Damage one index, delete another.
    let damaged = &indexes[0];
    let len = fs.contents(damaged).unwrap().len() as u64;
    assert!(len > 8);
    fs.flip_bit(damaged, 3, 7).unwrap();
    block_on(async { sluice_storage::io::FileSystem::remove(&fs, &indexes[2]).await.unwrap() });
    let log = open(&fs, small_config(), T0);
    block_on(assert_matches(&log, &model));
    // Lookups from inside every batch still land on the right batch.
    block_on(async {
        for (base, b) in model.batches.iter().step_by(7) {
            let inside = Offset(base + last_delta(b));
            let got = read_bytes(&log, inside, everything()).await.unwrap();
            assert_eq!(base_of(&got[0]), *base);
        }
    });
}

#[test]
fn invalid_and_oversized_batches_are_refused() {
    let fs = SimFileSystem::reliable(16);
    let log = open(&fs, small_config(), T0);
    block_on(async {
        let mut bad = build_batch(1, 5, T0);
        bad[16] = 1; // magic 1
        assert!(matches!(
            log.append(Bytes::from(bad), T0).await,
            Err(StorageError::InvalidBatch(_))
        ));
        let huge = Bytes::from(build_batch(1, 70 << 10, T0));
        assert!(matches!(
            log.append(huge, T0).await,
            Err(StorageError::BatchTooLarge { .. })
        ));
        assert_eq!(log.end_offset(), Offset(0));
    });
}

#[test]
fn a_full_disk_fails_appends_cleanly_and_they_resume_once_space_is_freed() {
    let fs = SimFileSystem::reliable(17);
    let log = open(&fs, small_config(), T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(17);
    fill(&log, &mut model, &mut rng, 100, T0);
    fs.set_capacity(Some(fs.used_bytes()));
    block_on(async {
        let mut saw_no_space = false;
        for _ in 0..400 {
            let b = random_batch(&mut rng, T0);
            match log.append(b.clone(), T0).await {
                Ok(info) => {
                    model.record(info.base_offset, &b);
                    if let Err(e) = log.wait_durable(info.last_offset.plus(1)).await {
                        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
                        saw_no_space = true;
                    }
                }
                Err(e) => {
                    assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
                    saw_no_space = true;
                }
            }
        }
        assert!(saw_no_space);
        // Reads of durable data work while the disk is full.
        let durable = log.durable_offset();
        let got = read_all(&log).await;
        assert_eq!(got.last().map(|b| base_of(b) + last_delta(b) + 1), Some(durable.0));
        fs.set_capacity(None);
        let b = random_batch(&mut rng, T0);
        let info = log.append(b.clone(), T0).await.expect("append after space freed");
        model.record(info.base_offset, &b);
        log.sync().await.unwrap();
        assert_matches(&log, &model).await;
    });
}

#[test]
fn a_failed_sync_is_reported_and_retried() {
    let fs = SimFileSystem::reliable(18);
    let log = open(&fs, small_config(), T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(18);
    fill(&log, &mut model, &mut rng, 20, T0);
    block_on(async {
        let b = random_batch(&mut rng, T0);
        let info = log.append(b.clone(), T0).await.unwrap();
        model.record(info.base_offset, &b);
        fs.set_faults(SimFaults {
            sync_eio_ppm: 1_000_000,
            ..SimFaults::default()
        });
        let err = log.sync().await.unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(log.durable_offset() <= info.base_offset);
        fs.set_faults(SimFaults::default());
        log.sync().await.unwrap();
        assert_matches(&log, &model).await;
    });
    // What the retry made durable survives a crash.
    let crashed = fs.crash();
    let log = open(&crashed, small_config(), T0);
    block_on(assert_matches(&log, &model));
}

#[test]
fn a_consumer_reading_from_disk_reads_little_more_than_it_gets() {
    // Batches of one record of 1 KiB, and of 15 (as sluice-bench sends).
    for (records, count) in [(1, 3000), (15, 400)] {
        // No cache: every read goes to the disk, as for a consumer far behind.
        let fs = SimFileSystem::reliable(31);
        let log = open_with_cache(&fs, 0);
        block_on(async {
            append_synced(&log, count, records).await;
            let limits = ReadLimits {
                bytes_max: 1 << 20,
                ..everything()
            };
            let mut next = Offset(0);
            let mut reads = 0;
            while next < log.end_offset() {
                let before = fs.bytes_read();
                let got = read_bytes(&log, next, limits).await.unwrap();
                let returned: usize = got.iter().map(|b| b.len()).sum();
                let read = (fs.bytes_read() - before) as usize;
                assert!(returned > 0 && returned <= limits.bytes_max);
                // The frames' headers, what lies between the index entry
                // and `from`, and the header of the frame that does not fit
                // are the overhead, with a refill of 64 KiB for small
                // frames. (Reading a whole chunk again for that one header
                // read up to twice what was returned.)
                assert!(
                    read <= returned + returned / 16 + (64 << 10),
                    "{records}-record batches: read {read} bytes from disk to return {returned}"
                );
                let last = got.last().unwrap();
                next = Offset(base_of(last) + last_delta(last) + 1);
                reads += 1;
            }
            assert!(reads >= 3, "{reads} reads");
        });
    }
}

#[test]
fn a_read_served_from_the_cache_that_stops_at_its_budget_reads_nothing_from_disk() {
    let fs = SimFileSystem::reliable(32);
    let log = open_with_cache(&fs, 64 << 20);
    block_on(async {
        append_synced(&log, 100, 15).await;
        let before = fs.bytes_read();
        let limits = ReadLimits {
            bytes_max: 100_000,
            ..everything()
        };
        let got = read_bytes(&log, Offset(0), limits).await.unwrap();
        assert!(!got.is_empty() && got.iter().map(|b| b.len()).sum::<usize>() <= limits.bytes_max);
        assert_eq!(
            fs.bytes_read(),
            before,
            "the batch past the budget was looked for on disk"
        );
    });
}

#[test]
fn with_min_one_a_read_with_no_budget_returns_the_first_batch() {
    let fs = SimFileSystem::reliable(33);
    for cache_bytes in [64 << 20, 0] {
        let log = open_with_cache(&fs, cache_bytes);
        block_on(async {
            if log.end_offset() == Offset(0) {
                for _ in 0..3 {
                    log.append(Bytes::from(build_batch(2, 100, T0)), T0).await.unwrap();
                }
                log.sync().await.unwrap();
            }
            let none = ReadLimits {
                bytes_max: 0,
                ..everything()
            };
            let got = read_bytes(&log, Offset(0), none).await.unwrap();
            assert_eq!(got.len(), 1, "cache of {cache_bytes} bytes");
            assert_eq!(base_of(&got[0]), 0);
            let got = read_bytes(&log, Offset(0), ReadLimits { min_one: false, ..none })
                .await
                .unwrap();
            assert!(got.is_empty());
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_new_segment_is_written_into_a_deleted_segments_file_whose_old_frames_never_come_back() {
    let fs = SimFileSystem::reliable(21);
    let mut config = small_config();
    config.retention_bytes = 150 << 10;
    let log = open(&fs, config, T0);
    let mut model = Model::default();
    // Frames of one page each, so that the new segment's data ends where
    // an old frame, whole and valid, begins (no padding overwrites it).
    let value_bytes = (3000..4096)
        .find(|v| FRAME_HEADER_BYTES + build_batch(1, *v, T0).len() == 4096)
        .unwrap();
    let append = |log: &Log<SimFileSystem>, model: &mut Model, count: usize| {
        block_on(async {
            for _ in 0..count {
                let b = Bytes::from(build_batch(1, value_bytes, T0));
                let info = log.append(b.clone(), T0).await.unwrap();
                model.record(info.base_offset, &b);
            }
            log.sync().await.unwrap();
        })
    };
    append(&log, &mut model, 100);
    assert!(block_on(log.enforce_retention(T0)).unwrap() >= 2);
    let kept = files_with(&fs, "free");
    assert_eq!(
        kept.len(),
        1,
        "the newest deleted segment's file is kept, the others go"
    );
    let old = fs.contents(&kept[0]).unwrap();
    // One batch at a time until the active segment rolls.
    let segments = log.stats().segment_count;
    while log.stats().segment_count == segments {
        append(&log, &mut model, 1);
    }
    assert!(files_with(&fs, "free").is_empty(), "the kept file was taken");
    let newest = files_with(&fs, "log").pop().unwrap();
    let reused = fs.contents(&newest).unwrap();
    assert!(reused.len() >= old.len(), "a reused file is not cut back");
    let tail = old.len() - 4096..old.len();
    assert_eq!(
        reused[tail.clone()],
        old[tail.clone()],
        "past the new data the old bytes remain"
    );
    assert!(old[tail].iter().any(|b| *b != 0));
    model.forget_below(log.start_offset());
    block_on(assert_matches(&log, &model));

    // Recovery meets the old frames right after the new ones, and stops.
    let durable = log.durable_offset();
    drop(log);
    let crashed = fs.crash();
    let log = open(&crashed, config, T0);
    assert_eq!(log.end_offset(), durable);
    block_on(assert_matches(&log, &model));
    append(&log, &mut model, 3);
    block_on(assert_matches(&log, &model));

    // A clean close trims the old bytes, and nothing is lost reopening.
    block_on(log.close()).unwrap();
    drop(log);
    assert!(crashed.contents(&newest).unwrap().len() < old.len());
    let log = open(&crashed, config, T0);
    block_on(assert_matches(&log, &model));
}

/// A log of `config` on a reliable disk holding `count` random batches,
/// with its model and the generator that made them.
fn filled(seed: u64, config: LogConfig, count: usize) -> (SimFileSystem, Log<SimFileSystem>, Model, SimRng) {
    let fs = SimFileSystem::reliable(seed);
    let log = open(&fs, config, T0);
    let mut model = Model::default();
    let mut rng = SimRng::new(seed);
    fill(&log, &mut model, &mut rng, count, T0);
    (fs, log, model, rng)
}

/// A log of `small_config` with 150 KiB of retention, not yet enforced,
/// holding 1200 random batches.
fn filled_past_retention(seed: u64, recycle: bool) -> (SimFileSystem, LogConfig, Log<SimFileSystem>, Model) {
    let mut config = small_config();
    config.retention_bytes = 150 << 10;
    config.recycle_segments = recycle;
    let (fs, log, model, _) = filled(seed, config, 1200);
    (fs, config, log, model)
}

#[test]
fn with_recycling_off_deleted_segments_files_all_go_and_a_kept_one_too() {
    let (fs, mut config, log, _) = filled_past_retention(23, false);
    assert!(block_on(log.enforce_retention(T0)).unwrap() > 0);
    assert!(files_with(&fs, "free").is_empty());
    // Turned off while a file is kept: the next deletion drops it.
    config.recycle_segments = true;
    log.set_config(config);
    let mut rng = SimRng::new(23);
    fill(&log, &mut Model::default(), &mut rng, 300, T0);
    assert!(block_on(log.enforce_retention(T0)).unwrap() > 0);
    assert_eq!(files_with(&fs, "free").len(), 1);
    config.recycle_segments = false;
    log.set_config(config);
    fill(&log, &mut Model::default(), &mut rng, 300, T0);
    assert!(block_on(log.enforce_retention(T0)).unwrap() > 0);
    assert!(files_with(&fs, "free").is_empty());
    // Off at open: a kept file is deleted.
    config.recycle_segments = true;
    log.set_config(config);
    fill(&log, &mut Model::default(), &mut rng, 300, T0);
    assert!(block_on(log.enforce_retention(T0)).unwrap() > 0);
    assert_eq!(files_with(&fs, "free").len(), 1);
    block_on(log.close()).unwrap();
    drop(log);
    config.recycle_segments = false;
    let _log = open(&fs, config, T0);
    assert!(files_with(&fs, "free").is_empty());
}

#[test]
fn a_leftover_segment_below_the_start_does_not_cut_the_segments_after_it() {
    let (fs, config, log, mut model) = filled_past_retention(22, false);
    let oldest = files_with(&fs, "log").remove(0);
    let oldest_bytes = fs.contents(&oldest).unwrap();
    assert!(block_on(log.enforce_retention(T0)).unwrap() >= 2);
    let start = log.start_offset();
    model.forget_below(start);
    // The oldest segment's file is back (its deletion, say, failed), while
    // the segment after it is gone: a gap below the start.
    block_on(sluice_storage::io::write_file_atomic(&fs, &oldest, &oldest_bytes)).unwrap();
    drop(log);
    let crashed = fs.crash();
    let log = open(&crashed, config, T0);
    assert_eq!(log.start_offset(), start);
    block_on(assert_matches(&log, &model));
    assert!(!crashed.file_names().contains(&oldest), "the leftover is removed");
}

#[test]
fn a_stray_segment_file_inside_a_live_segment_does_not_cut_the_log_at_open() {
    // A roll that failed after creating its file leaves a `.log` named by
    // an offset the kept segment went on to hold; the log start then moves
    // past that offset.
    let (fs, log, mut model, _) = filled(25, small_config(), 600);
    let bases = segment_bases(&fs);
    assert!(bases.len() >= 3);
    let stray = (bases[1] + bases[2]) / 2;
    let stray_path = dir().join(format!("{stray:020}.log"));
    block_on(sluice_storage::io::write_file_atomic(&fs, &stray_path, b"")).unwrap();
    let start = block_on(log.advance_start(Offset(stray + 1))).unwrap();
    assert_eq!(start, Offset(stray + 1));
    model.forget_below(start);
    drop(log);
    let crashed = fs.crash();
    let log = open(&crashed, small_config(), T0);
    assert_eq!(log.start_offset(), start);
    block_on(assert_matches(&log, &model));
    assert!(!crashed.file_names().contains(&stray_path), "the stray file is removed");
}
