//! Paths through nodes that are not linked directly: breadth-first search over the links every
//! node declares in its record.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The first hop and hop count of a shortest path from this node to every node it can reach.
/// `links`: this node's own links (the only first hops); `neighbours`: each node's declared
/// links (taken in both directions, since a record may lag); `avoid`: nodes a path must not
/// pass through (where the call has already been).
pub fn first_hops(
    links: &[&str],
    neighbours: &BTreeMap<&str, Vec<&str>>,
    avoid: &BTreeSet<&str>,
) -> BTreeMap<String, (String, u32)> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, list) in neighbours {
        for other in list {
            graph.entry(node).or_default().push(other);
            graph.entry(other).or_default().push(node);
        }
    }
    let mut hops: BTreeMap<String, (String, u32)> = BTreeMap::new();
    let mut seen: BTreeSet<&str> = avoid.clone();
    let mut queue: VecDeque<(&str, &str, u32)> = VecDeque::new();
    for link in links {
        if seen.insert(link) {
            queue.push_back((link, link, 1));
        }
    }
    while let Some((node, first, distance)) = queue.pop_front() {
        hops.insert(node.to_string(), (first.to_string(), distance));
        for next in graph.get(node).into_iter().flatten() {
            if seen.insert(next) {
                queue.push_back((next, first, distance + 1));
            }
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_the_fewest_hops_and_avoid_visited_nodes() {
        // me - a - b - c, and me - d - c
        let neighbours: BTreeMap<&str, Vec<&str>> = [
            ("me", vec!["a", "d"]),
            ("a", vec!["me", "b"]),
            ("b", vec!["c"]),
            ("d", vec!["c"]),
        ]
        .into_iter()
        .collect();
        let none = BTreeSet::from(["me"]);
        let routes = first_hops(&["a", "d"], &neighbours, &none);
        assert_eq!(routes["c"], ("d".to_string(), 2));
        assert_eq!(routes["b"], ("a".to_string(), 2));
        assert_eq!(routes["a"], ("a".to_string(), 1));

        let avoid_d = BTreeSet::from(["me", "d"]);
        let routes = first_hops(&["a", "d"], &neighbours, &avoid_d);
        assert_eq!(routes["c"], ("a".to_string(), 3));
        assert!(!routes.contains_key("d"));

        // Only this node's own links start a path, whatever the records say.
        let routes = first_hops(&["a"], &neighbours, &none);
        assert_eq!(routes["c"], ("a".to_string(), 3));
    }
}
