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
