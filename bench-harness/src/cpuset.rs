//! CPU lists like `0-3,8`, and `none` for unpinned executors.

use anyhow::{Context, bail};
use glommio::Placement;

/// CPUs a list names, in order; empty for `none`.
pub fn parse(list: &str) -> anyhow::Result<Vec<usize>> {
    let list = list.trim();
    if list.is_empty() || list == "none" {
        return Ok(Vec::new());
    }
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let from: usize = from.parse().with_context(|| format!("CPU {from:?} in {list:?}"))?;
        let to: usize = to.parse().with_context(|| format!("CPU {to:?} in {list:?}"))?;
        if from > to {
            bail!("CPU range {part:?} runs backwards");
        }
        cpus.extend(from..=to);
    }
    Ok(cpus)
}

/// Where executor `i` runs: the i-th CPU of the list, round robin; unpinned
/// for an empty list.
pub fn placement(cpus: &[usize], i: usize) -> Placement {
    if cpus.is_empty() {
        Placement::Unbound
    } else {
        Placement::Fixed(cpus[i % cpus.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ranges_and_none() {
        assert_eq!(parse("0-3,8").ok(), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse("1").ok(), Some(vec![1]));
        assert_eq!(parse("none").ok(), Some(vec![]));
        assert!(parse("3-1").is_err());
        assert!(parse("a").is_err());
        assert!(matches!(placement(&[1, 2], 3), Placement::Fixed(2)));
        assert!(matches!(placement(&[], 3), Placement::Unbound));
    }
}
