//! The little of glommio that handlers use, in one place, so that handler
//! and shard logic reads as plain async Rust.

use std::future::Future;
use std::time::Duration;

/// Longest wait a client can ask for (fetch `max_wait_ms`, produce
/// `timeout_ms`); beyond it timers are clamped. glommio timers panic on an
/// `Instant` overflow, so client numbers never reach them unclamped.
pub const CLIENT_WAIT_MAX: Duration = Duration::from_secs(300);

/// A client-supplied wait in milliseconds, clamped to `[0, CLIENT_WAIT_MAX]`.
pub fn client_wait(ms: i64) -> Duration {
    Duration::from_millis(ms.clamp(0, CLIENT_WAIT_MAX.as_millis() as i64) as u64)
}

pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> glommio::Task<T> {
    glommio::spawn_local(future)
}

pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// `Some(output)` if `future` finishes within `d`.
pub async fn timeout<T>(d: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(d).await;
        None
    })
    .await
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Completes when the first of `futures` does. Never completes for an empty
/// list.
pub async fn first_of<'a>(mut futures: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>>) {
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Instant;

    use super::*;

    /// How long a test below lets a task compute before it calls the
    /// runtime broken: far above glommio's preempt period (100 ms), so
    /// only a runtime that stopped preempting fails, however slow the host.
    const LIVENESS_CAP: Duration = Duration::from_secs(20);

    fn on_executor<T>(future: impl Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(future)
    }

    /// vendor/glommio keeps its preempt timer armed across turns of the
    /// reactor instead of re-arming it on each. A shard's task that
    /// computes without waiting, and gives way only when preemption is due
    /// (as long appends and encodes do), must still be preempted again and
    /// again, so that timers fire and I/O completes meanwhile: here, after
    /// thousands of turns for file reads (each of which keeps the timer
    /// armed, unless it is half spent), each of a ticker's sleeps ends while
    /// the busy task runs.
    #[test]
    fn a_task_that_never_waits_is_still_preempted_for_each_timer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 4096]).expect("write");
        on_executor(async move {
            let file = glommio::io::BufferedFile::open(&path).await.expect("open");
            for _ in 0..2000 {
                let read = file.read_at(0, 4096).await.expect("read");
                assert_eq!(read.len(), 4096);
            }
            file.close().await.expect("close");
            let ticks = Rc::new(Cell::new(0u32));
            let ticker = spawn({
                let ticks = ticks.clone();
                async move {
                    for _ in 0..5 {
                        sleep(Duration::from_millis(1)).await;
                        ticks.set(ticks.get() + 1);
                    }
                }
            });
            let started = Instant::now();
            while ticks.get() < 5 && started.elapsed() < LIVENESS_CAP {
                std::hint::black_box(started.elapsed());
                glommio::yield_if_needed().await;
            }
            assert_eq!(
                ticks.get(),
                5,
                "the busy task was not preempted for the ticker's timers"
            );
            ticker.await;
        });
    }

    /// An executor with nothing to do sleeps, and wakes for its next timer
    /// (the patch cancels the preempt timer before a sleep, as upstream).
    #[test]
    fn an_idle_executor_wakes_for_its_timers() {
        let slept = on_executor(async {
            let started = Instant::now();
            for _ in 0..3 {
                sleep(Duration::from_millis(20)).await;
            }
            started.elapsed()
        });
        assert!(slept >= Duration::from_millis(60), "woke early: {slept:?}");
        assert!(slept < LIVENESS_CAP, "did not wake: {slept:?}");
    }
}
