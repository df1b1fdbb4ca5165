//! The order in which a subtree of spaces is torn down: without recursion (a kernel stack
//! is 16 KiB and any child can nest spaces as deep as its budget allows), each space after
//! all of its descendants, as a recursive teardown would order it.

use alloc::vec::Vec;

/// Lists the subtree under `root` breadth first, then returns it deepest first, `root`
/// last. `children(n)` gives a node's children, or `None` for a node that is gone or has
/// already ended (its subtree is not walked). A node reached twice is listed once, so even
/// a corrupt graph with a cycle ends.
pub fn deepest_first<T, I>(root: T, mut children: impl FnMut(T) -> Option<I>) -> Vec<T>
where
    T: Copy + Eq,
    I: IntoIterator<Item = T>,
{
    let mut listed = alloc::vec![root];
    let mut i = 0;
    while i < listed.len() {
        if let Some(kids) = children(listed[i]) {
            for kid in kids {
                if !listed.contains(&kid) {
                    listed.push(kid);
                }
            }
        }
        i += 1;
    }
    listed.reverse();
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn a_64_deep_chain_ends_from_the_bottom_up() {
        let order = deepest_first(0u32, |n| (n < 63).then(|| [n + 1]));
        assert_eq!(order, (0..64).rev().collect::<Vec<_>>());
    }

    #[test]
    fn every_space_ends_after_its_descendants() {
        // 0 -> {1, 2}, 1 -> {3, 4}, 2 -> {5}, 4 -> {6}
        let tree = |n: u32| -> Option<Vec<u32>> {
            Some(match n {
                0 => vec![1, 2],
                1 => vec![3, 4],
                2 => vec![5],
                4 => vec![6],
                _ => vec![],
            })
        };
        let order = deepest_first(0, tree);
        assert_eq!(order.len(), 7);
        assert_eq!(order.last(), Some(&0));
        let at = |n: u32| order.iter().position(|&x| x == n).unwrap();
        for (parent, kids) in [(0, vec![1, 2]), (1, vec![3, 4]), (2, vec![5]), (4, vec![6])] {
            for kid in kids {
                assert!(
                    at(kid) < at(parent),
                    "{kid} after its parent {parent}: {order:?}"
                );
            }
        }
    }

    #[test]
    fn an_ended_node_is_not_walked_and_a_cycle_ends() {
        let order = deepest_first(0u32, |n| match n {
            0 => Some(vec![1]),
            1 => None, // already ended: its children are not listed
            _ => Some(vec![9]),
        });
        assert_eq!(order, [1, 0]);
        let cyclic = deepest_first(0u32, |n| Some([(n + 1) % 3]));
        assert_eq!(cyclic, [2, 1, 0]);
    }
}
