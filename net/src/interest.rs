//! Interest management: which objects one client is told about. A client sees every object in its
//! own shard cell, plus the objects of the neighbouring cells that lie within `radius_mm` of it,
//! capped at the `objects_max` nearest (ties by id, so the choice is deterministic).
//!
//! Pure functions over plain positions in millimetres: no ECS, no shard storage, no clock. The
//! server gathers the candidates (from the cells [`cells_in_interest`] names) and passes them in.

/// A point in zone space, in millimetres.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PosMm {
    pub x_mm: i32,
    pub y_mm: i32,
}

/// One object as interest management sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub id: u64,
    pub pos: PosMm,
}

/// The zone rectangle (min inclusive, max exclusive) split into `cols` × `rows` equal cells, as
/// the sim splits it into shards. A point outside the zone belongs to the nearest cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardGrid {
    pub min: PosMm,
    pub max: PosMm,
    pub cols: u32,
    pub rows: u32,
}

/// A cell of the grid, by column and row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    pub col: u32,
    pub row: u32,
}

impl ShardGrid {
    fn span_mm(min: i32, max: i32) -> i64 {
        (i64::from(max) - i64::from(min)).max(1)
    }

    fn index(p: i32, min: i32, max: i32, n: u32) -> u32 {
        let n = n.max(1);
        let rel = (i64::from(p) - i64::from(min)).clamp(0, Self::span_mm(min, max) - 1);
        let i = rel * i64::from(n) / Self::span_mm(min, max);
        u32::try_from(i).unwrap_or(n - 1).min(n - 1)
    }

    /// The cell that holds `p` (clamped into the zone).
    pub fn cell_of(&self, p: PosMm) -> Cell {
        Cell {
            col: Self::index(p.x_mm, self.min.x_mm, self.max.x_mm, self.cols),
            row: Self::index(p.y_mm, self.min.y_mm, self.max.y_mm, self.rows),
        }
    }

    /// The cell's rectangle as `(min, max)` in mm, max exclusive.
    pub fn cell_rect(&self, c: Cell) -> (PosMm, PosMm) {
        let edge = |min: i32, max: i32, n: u32, i: u32| -> i32 {
            let v = i64::from(min) + Self::span_mm(min, max) * i64::from(i) / i64::from(n.max(1));
            i32::try_from(v).unwrap_or(max)
        };
        (
            PosMm {
                x_mm: edge(self.min.x_mm, self.max.x_mm, self.cols, c.col),
                y_mm: edge(self.min.y_mm, self.max.y_mm, self.rows, c.row),
            },
            PosMm {
                x_mm: edge(self.min.x_mm, self.max.x_mm, self.cols, c.col + 1),
                y_mm: edge(self.min.y_mm, self.max.y_mm, self.rows, c.row + 1),
            },
        )
    }
}

/// Squared distance in mm², exact for any two `i32` points.
pub fn dist2_mm2(a: PosMm, b: PosMm) -> u64 {
    let dx = (i64::from(a.x_mm) - i64::from(b.x_mm)).unsigned_abs();
    let dy = (i64::from(a.y_mm) - i64::from(b.y_mm)).unsigned_abs();
    dx * dx + dy * dy
}

/// Squared distance from `p` to the nearest point of the rectangle `[min, max)`.
fn dist2_to_rect(p: PosMm, min: PosMm, max: PosMm) -> u64 {
    let axis = |v: i32, lo: i32, hi: i32| -> u64 {
        let (v, lo, hi) = (i64::from(v), i64::from(lo), i64::from(hi) - 1);
        if v < lo {
            (lo - v).unsigned_abs()
        } else if v > hi {
            (v - hi).unsigned_abs()
        } else {
            0
        }
    };
    let dx = axis(p.x_mm, min.x_mm, max.x_mm);
    let dy = axis(p.y_mm, min.y_mm, max.y_mm);
    dx * dx + dy * dy
}

/// The cells a client at `client` must be told about: its own, and every cell with a point within
/// `radius_mm`, sorted by column, then row.
pub fn cells_in_interest(grid: &ShardGrid, client: PosMm, radius_mm: u32) -> Vec<Cell> {
    let own = grid.cell_of(client);
    let r2 = u64::from(radius_mm) * u64::from(radius_mm);
    let mut out = Vec::new();
    for col in 0..grid.cols.max(1) {
        for row in 0..grid.rows.max(1) {
            let c = Cell { col, row };
            let (min, max) = grid.cell_rect(c);
            if c == own || dist2_to_rect(client, min, max) <= r2 {
                out.push(c);
            }
        }
    }
    out
}

/// The ids of the objects `client` is interested in, ascending: those in its own cell and those
/// within `radius_mm`, keeping only the `objects_max` nearest (ties by id).
pub fn interest_set(objects: &[Located], grid: &ShardGrid, client: PosMm, radius_mm: u32, objects_max: usize) -> Vec<u64> {
    let own = grid.cell_of(client);
    let r2 = u64::from(radius_mm) * u64::from(radius_mm);
    let mut chosen: Vec<(u64, u64)> = objects
        .iter()
        .filter_map(|o| {
            let d2 = dist2_mm2(o.pos, client);
            (d2 <= r2 || grid.cell_of(o.pos) == own).then_some((d2, o.id))
        })
        .collect();
    if chosen.len() > objects_max {
        if objects_max == 0 {
            return Vec::new();
        }
        chosen.select_nth_unstable(objects_max - 1);
        chosen.truncate(objects_max);
    }
    let mut ids: Vec<u64> = chosen.into_iter().map(|(_, id)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grid() -> ShardGrid {
        // 400 m × 400 m, 4 × 4 cells of 100 m.
        ShardGrid {
            min: PosMm { x_mm: 0, y_mm: 0 },
            max: PosMm {
                x_mm: 400_000,
                y_mm: 400_000,
            },
            cols: 4,
            rows: 4,
        }
    }

    fn at(id: u64, x_m: i32, y_m: i32) -> Located {
        Located {
            id,
            pos: PosMm {
                x_mm: x_m * 1000,
                y_mm: y_m * 1000,
            },
        }
    }

    #[test]
    fn cells() {
        let g = grid();
        assert_eq!(g.cell_of(PosMm { x_mm: 0, y_mm: 0 }), Cell { col: 0, row: 0 });
        assert_eq!(
            g.cell_of(PosMm {
                x_mm: 99_999,
                y_mm: 100_000
            }),
            Cell { col: 0, row: 1 }
        );
        assert_eq!(
            g.cell_of(PosMm {
                x_mm: i32::MAX,
                y_mm: i32::MIN
            }),
            Cell { col: 3, row: 0 }
        );
        // In the middle of cell (1, 1) with a 20 m radius: only its own cell.
        assert_eq!(
            cells_in_interest(
                &g,
                PosMm {
                    x_mm: 150_000,
                    y_mm: 150_000
                },
                20_000
            ),
            vec![Cell { col: 1, row: 1 }]
        );
        // Near the corner of four cells: all four.
        let c = cells_in_interest(
            &g,
            PosMm {
                x_mm: 195_000,
                y_mm: 195_000,
            },
            20_000,
        );
        assert_eq!(
            c,
            vec![
                Cell { col: 1, row: 1 },
                Cell { col: 1, row: 2 },
                Cell { col: 2, row: 1 },
                Cell { col: 2, row: 2 }
            ]
        );
    }

    #[test]
    fn own_cell_whole_neighbours_by_radius() {
        let g = grid();
        let me = PosMm {
            x_mm: 195_000,
            y_mm: 150_000,
        };
        let objects = [
            at(1, 105, 105), // own cell, far: in
            at(2, 210, 150), // next cell, 15 m: in
            at(3, 260, 150), // next cell, 65 m: out
            at(4, 195, 150), // on top of me: in
            at(5, 390, 390), // far away: out
        ];
        assert_eq!(interest_set(&objects, &g, me, 20_000, 100), vec![1, 2, 4]);
        // Capped at the two nearest.
        assert_eq!(interest_set(&objects, &g, me, 20_000, 2), vec![2, 4]);
        assert_eq!(interest_set(&objects, &g, me, 20_000, 0), Vec::<u64>::new());
    }

    proptest! {
        #[test]
        fn matches_a_brute_force_model(
            pts in proptest::collection::vec((0u64..1000, -10_000i32..410_000, -10_000i32..410_000), 0..200),
            me in (0i32..400_000, 0i32..400_000),
            radius_mm in 0u32..150_000,
            cap in 0usize..50,
        ) {
            let g = grid();
            let mut seen = std::collections::BTreeSet::new();
            let objects: Vec<Located> = pts.into_iter().filter(|p| seen.insert(p.0)).map(|(id, x, y)| Located { id, pos: PosMm { x_mm: x, y_mm: y } }).collect();
            let me = PosMm { x_mm: me.0, y_mm: me.1 };
            let got = interest_set(&objects, &g, me, radius_mm, cap);
            let mut model: Vec<(u64, u64)> = objects.iter()
                .filter(|o| g.cell_of(o.pos) == g.cell_of(me) || dist2_mm2(o.pos, me) <= u64::from(radius_mm).pow(2))
                .map(|o| (dist2_mm2(o.pos, me), o.id)).collect();
            model.sort_unstable();
            model.truncate(cap);
            let mut want: Vec<u64> = model.into_iter().map(|(_, id)| id).collect();
            want.sort_unstable();
            prop_assert_eq!(&got, &want);
            // Every chosen object lies in a cell cells_in_interest names.
            let cells = cells_in_interest(&g, me, radius_mm);
            for o in objects.iter().filter(|o| got.contains(&o.id)) {
                prop_assert!(cells.contains(&g.cell_of(o.pos)));
            }
        }
    }
}
