//! [`View`]: the quantized objects one client sees at one tick, sorted by id. It is what the
//! delta codec ([`crate::delta`]) encodes on the server and reconstructs, exactly, on the client.
//!
//! Plain data: no knowledge of the ECS, the shard grid or the transport.

use crate::quantize::{quantize_hp, quantize_pos, quantize_vel};

/// Most objects one view may hold. [`View::new`] refuses more, and so does the decoder, so a
/// hostile datagram sequence cannot grow a client's view without bound.
pub const VIEW_OBJECTS_MAX: usize = 65_536;

/// One object as the wire carries it (see [`crate::quantize`] for the units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QObject {
    pub id: u64,
    pub kind: u16,
    /// Position, in 100 mm units from the zone's minimum corner.
    pub x: u32,
    pub y: u32,
    /// Velocity, in cm per tick.
    pub vx: i16,
    pub vy: i16,
    pub hp: u16,
}

impl QObject {
    /// Quantizes one object's sim state (mm, mm/tick, points) against the zone origin (mm).
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(id: u64, kind: u16, pos_mm: (i32, i32), vel_mm_per_tick: (i32, i32), hp: i32, origin_mm: (i32, i32)) -> QObject {
        QObject {
            id,
            kind,
            x: quantize_pos(pos_mm.0, origin_mm.0),
            y: quantize_pos(pos_mm.1, origin_mm.1),
            vx: quantize_vel(vel_mm_per_tick.0),
            vy: quantize_vel(vel_mm_per_tick.1),
            hp: quantize_hp(hp),
        }
    }
}

/// Why a list of objects is not a view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("object id {id} appears twice in one view")]
    DuplicateId { id: u64 },
    #[error("a view holds at most {VIEW_OBJECTS_MAX} objects, not {count}")]
    TooManyObjects { count: usize },
}

/// The objects one client sees at `tick`, sorted by id, ids unique, at most [`VIEW_OBJECTS_MAX`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    tick: u64,
    objects: Vec<QObject>,
}

impl View {
    /// Sorts `objects` by id; refuses duplicate ids and oversized views. Objects already in
    /// strictly ascending id order (the server's interest search gives them so, once per client
    /// and snapshot) cost one pass.
    pub fn new(tick: u64, mut objects: Vec<QObject>) -> Result<View, ViewError> {
        if objects.len() > VIEW_OBJECTS_MAX {
            return Err(ViewError::TooManyObjects { count: objects.len() });
        }
        if objects.is_sorted_by(|a, b| a.id < b.id) {
            return Ok(View { tick, objects });
        }
        objects.sort_unstable_by_key(|o| o.id);
        if let Some(w) = objects.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(ViewError::DuplicateId { id: w[0].id });
        }
        Ok(View { tick, objects })
    }

    /// The empty view at `tick`.
    pub fn empty(tick: u64) -> View {
        View { tick, objects: Vec::new() }
    }

    /// For code that already holds sorted, unique objects (the decoder).
    pub(crate) fn from_sorted(tick: u64, objects: Vec<QObject>) -> View {
        debug_assert!(objects.windows(2).all(|w| w[0].id < w[1].id));
        debug_assert!(objects.len() <= VIEW_OBJECTS_MAX);
        View { tick, objects }
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// The objects, sorted by id.
    pub fn objects(&self) -> &[QObject] {
        &self.objects
    }

    pub fn get(&self, id: u64) -> Option<&QObject> {
        self.objects.binary_search_by_key(&id, |o| o.id).ok().map(|i| &self.objects[i])
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: u64) -> QObject {
        QObject {
            id,
            kind: 1,
            x: 2,
            y: 3,
            vx: 0,
            vy: 0,
            hp: 9,
        }
    }

    #[test]
    fn new_sorts_and_refuses_duplicates() {
        let v = View::new(5, vec![obj(3), obj(1), obj(2)]).unwrap();
        assert_eq!(v.objects().iter().map(|o| o.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(v.get(2), Some(&obj(2)));
        assert_eq!(v.get(4), None);
        assert_eq!(View::new(5, vec![obj(3), obj(3)]), Err(ViewError::DuplicateId { id: 3 }));
    }

    #[test]
    fn quantize_uses_the_origin() {
        let o = QObject::quantize(7, 2, (10_050, -20_000), (-15, 24), 70_000, (0, -20_000));
        assert_eq!(
            o,
            QObject {
                id: 7,
                kind: 2,
                x: 101,
                y: 0,
                vx: -2,
                vy: 2,
                hp: u16::MAX
            }
        );
    }
}
