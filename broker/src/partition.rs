//! A partition as its owning shard holds it: the log, the topic settings
//! that apply to it, and its background flusher.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::{BatchCache, Log, Offset};
use tracing::warn;
use uuid::Uuid;

use crate::metadata::partition_dir;
use crate::runtime;
use crate::topic_config::{TopicSettings, log_config};

/// Wait after a failed background sync before trying again.
const FLUSH_RETRY_DELAY: Duration = Duration::from_millis(100);

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    pub log: Log<DmaFileSystem>,
    settings: RefCell<TopicSettings>,
}

impl Partition {
    pub async fn open(
        fs: &DmaFileSystem,
        cache: &BatchCache,
        data_dir: &std::path::Path,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        settings: TopicSettings,
    ) -> sluice_storage::Result<Rc<Partition>> {
        let dir = partition_dir(data_dir, topic, index);
        let log = Log::open(fs.clone(), dir, log_config(&settings), cache.clone(), runtime::now_ms()).await?;
        let partition = Rc::new(Partition {
            topic: topic.into(),
            topic_id,
            index,
            log,
            settings: RefCell::new(settings),
        });
        partition.start_flusher();
        Ok(partition)
    }

    /// Keeps appended data flowing to the disk until the log closes, so that
    /// acks=0/1 data becomes durable (and visible) within a sync or two.
    fn start_flusher(self: &Rc<Self>) {
        let me = self.clone();
        runtime::spawn_detached(async move {
            loop {
                match me.log.flush_until_closed().await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(topic = %me.topic, partition = me.index, error = %e, "background sync failed; retrying");
                        runtime::sleep(FLUSH_RETRY_DELAY).await;
                    }
                }
            }
        });
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings.borrow().clone()
    }

    pub fn apply_settings(&self, settings: TopicSettings) {
        self.log.set_config(log_config(&settings));
        *self.settings.borrow_mut() = settings;
    }

    /// Everything below is durable and may be served: Sluice's high
    /// watermark on a single node.
    pub fn high_watermark(&self) -> Offset {
        self.log.durable_offset()
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log.start_offset()
    }
}
