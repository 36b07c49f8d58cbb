//! The Replicate stage's copies, asked for once and shared: the game socket and the world
//! visualizer both read the same `Arc`ed copies of a tick, so a tick that both want costs one
//! copy, and a tick that neither wants costs none.
//!
//! Never copies or sorts anything itself: it only switches the stage on and off and takes what
//! the stage produced.

use std::sync::Arc;

use zone_sim::{Replicated, Zone};

/// Each shard's copies at one tick, by shard index (storage order within a shard).
pub type Copies = Arc<Vec<Vec<Replicated>>>;

/// Switches the Replicate stage for the coming tick and takes its copies after it.
#[derive(Debug, Default)]
pub struct Replicas {
    on: bool,
}

impl Replicas {
    /// Before a step: whether anyone wants copies of the coming tick.
    pub fn request(&mut self, zone: &mut Zone, wanted: bool) {
        if wanted != self.on {
            zone.set_replicate(wanted);
            self.on = wanted;
        }
    }

    /// After a step: the copies, if they were requested.
    pub fn take(&mut self, zone: &mut Zone) -> Option<Copies> {
        self.on.then(|| Arc::new(zone.take_replicas()))
    }
}
