//! CPU lists like `0-3,8`, as in `taskset` and cgroups.

use anyhow::{Context, bail};

/// The CPUs of a list, in the order given, without repeats.
pub fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: usize = first.parse().with_context(|| format!("bad CPU {first:?}"))?;
        let last: usize = last.parse().with_context(|| format!("bad CPU {last:?}"))?;
        if last < first {
            bail!("range {part} runs backwards");
        }
        if last - first > 4096 {
            bail!("range {part} is too long");
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                bail!("CPU {cpu} appears twice");
            }
            cpus.push(cpu);
        }
    }
    if cpus.is_empty() {
        bail!("no CPUs in {list:?}");
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list("5, 1").unwrap(), vec![5, 1]);
        for bad in ["", "3-1", "x", "1,1", "0-99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }
}
