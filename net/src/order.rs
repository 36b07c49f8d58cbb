//! Putting a frame's objects in id order: [`sort_by_id`], a radix sort of `(id, index)` pairs,
//! which the server runs once per snapshot frame over every replicated object (10,000 and more)
//! before quantizing them.
//!
//! A pass per byte of the ids, skipping every byte in which all the ids agree: a zone's NPC ids are
//! small and dense, and player objects add one high bit ([`crate::endpoint::PLAYER_OBJECT_BIT`]),
//! so a frame takes two or three passes over the pairs instead of a comparison sort's
//! `log2(n)` levels. Pure and allocation-bounded: one scratch buffer the size of the input.

/// Sorts `pairs` by id (the first field), ascending; pairs with equal ids keep their order.
/// `scratch` is any buffer: it is resized and left holding garbage, so a caller that sorts every
/// frame can keep it and skip the allocation.
pub fn sort_by_id(pairs: &mut Vec<(u64, u32)>, scratch: &mut Vec<(u64, u32)>) {
    let Some(&(first, _)) = pairs.first() else { return };
    // The bits in which some id differs from the first: only their bytes need a pass.
    let differ = pairs.iter().fold(0u64, |acc, &(id, _)| acc | (id ^ first));
    if differ == 0 {
        return;
    }
    scratch.clear();
    scratch.resize(pairs.len(), (0, 0));
    for byte in 0..8 {
        let shift = byte * 8;
        if (differ >> shift) & 0xff == 0 {
            continue;
        }
        let mut at = [0usize; 256];
        for &(id, _) in pairs.iter() {
            at[((id >> shift) & 0xff) as usize] += 1;
        }
        let mut sum = 0;
        for slot in at.iter_mut() {
            let count = *slot;
            *slot = sum;
            sum += count;
        }
        for &pair in pairs.iter() {
            let b = ((pair.0 >> shift) & 0xff) as usize;
            scratch[at[b]] = pair;
            at[b] += 1;
        }
        std::mem::swap(pairs, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sorts_like_a_stable_sort(ids in proptest::collection::vec(
            prop_oneof![0u64..64, 0u64..20_000, any::<u64>(), (0u64..20_000).prop_map(|i| i | 1 << 62)],
            0..600,
        )) {
            let mut pairs: Vec<(u64, u32)> = ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
            let mut expected = pairs.clone();
            expected.sort_by_key(|&(id, _)| id);
            sort_by_id(&mut pairs, &mut Vec::new());
            prop_assert_eq!(pairs, expected);
        }
    }

    #[test]
    fn edge_cases() {
        let mut scratch = vec![(9, 9); 3];
        for mut pairs in [vec![], vec![(5, 0)], vec![(5, 0), (5, 1)], vec![(u64::MAX, 0), (0, 1)]] {
            let mut expected = pairs.clone();
            expected.sort_by_key(|&(id, _)| id);
            sort_by_id(&mut pairs, &mut scratch);
            assert_eq!(pairs, expected);
        }
    }
}
