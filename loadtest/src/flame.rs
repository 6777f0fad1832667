//! `flamegraph`: turns `perf script` output into a flame graph SVG with the
//! inferno library (no separate install needed), and prints which share of
//! the samples lands in frames matching `--highlight` (e.g. the unmask loop).

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use inferno::collapse::perf::{Folder, Options as FoldOptions};
use inferno::collapse::Collapse;
use inferno::flamegraph::{self, Options};

/// Arguments of `flamegraph`.
#[derive(clap::Args, Debug)]
pub struct FlameArgs {
    /// `perf script` output (`-` for stdin).
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// SVG to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Title of the graph.
    #[arg(long, default_value = "ringcast")]
    pub title: String,
    /// Report the share of samples in frames whose name contains this
    /// (case-insensitive); repeatable.
    #[arg(long)]
    pub highlight: Vec<String>,
}

/// Share of samples whose stack contains a frame matching a pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The pattern.
    pub pattern: String,
    /// Samples with the matching frame anywhere on the stack.
    pub inclusive: f64,
    /// Samples with the matching frame on top (self time).
    pub own: f64,
}

/// Computes [`Share`]s from folded stacks (`a;b;c 12` lines).
pub fn shares(folded: &str, patterns: &[String]) -> (u64, Vec<Share>) {
    let mut total = 0u64;
    let mut incl: HashMap<usize, u64> = HashMap::new();
    let mut own: HashMap<usize, u64> = HashMap::new();
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = count.trim().parse::<u64>() else {
            continue;
        };
        total += n;
        let lower = stack.to_ascii_lowercase();
        let top = lower.rsplit(';').next().unwrap_or("");
        for (i, p) in patterns.iter().enumerate() {
            let p = p.to_ascii_lowercase();
            if lower.contains(&p) {
                *incl.entry(i).or_default() += n;
            }
            if top.contains(&p) {
                *own.entry(i).or_default() += n;
            }
        }
    }
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let list = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| Share {
            pattern: p.clone(),
            inclusive: pct(incl.get(&i).copied().unwrap_or(0)),
            own: pct(own.get(&i).copied().unwrap_or(0)),
        })
        .collect();
    (total, list)
}

/// Runs the subcommand.
pub fn run(args: &FlameArgs) -> Result<(), String> {
    let reader: Box<dyn Read> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .map_err(|e| format!("{}: {e}", args.input.display()))?,
        )
    };
    let mut folded = Vec::new();
    Folder::from(FoldOptions::default())
        .collapse(BufReader::new(reader), &mut folded)
        .map_err(|e| format!("collapsing perf output: {e}"))?;
    let folded = String::from_utf8_lossy(&folded).into_owned();
    if folded.trim().is_empty() {
        return Err("no stacks in the perf output".into());
    }
    let mut opts = Options::default();
    opts.title = args.title.clone();
    opts.count_name = "samples".into();
    let out = std::fs::File::create(&args.output)
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    flamegraph::from_lines(&mut opts, folded.lines(), std::io::BufWriter::new(out))
        .map_err(|e| format!("writing the flame graph: {e}"))?;
    let (total, list) = shares(&folded, &args.highlight);
    // perf's folder weighs each sample by its period (ns for cpu-clock).
    eprintln!(
        "flamegraph: total weight {total} -> {}",
        args.output.display()
    );
    for s in list {
        println!(
            "frames matching {:?}: {:.1}% of samples on the stack, {:.1}% self",
            s.pattern, s.inclusive, s.own
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_folded_stacks() {
        let folded = "main;read;unmask_avx2 30\nmain;write 60\nmain;decode;utf8 10\n";
        let (total, s) = shares(folded, &["unmask".into(), "main".into()]);
        assert_eq!(total, 100);
        assert_eq!(s[0].inclusive, 30.0);
        assert_eq!(s[0].own, 30.0);
        assert_eq!(s[1].inclusive, 100.0);
        assert_eq!(s[1].own, 0.0);
    }
}
