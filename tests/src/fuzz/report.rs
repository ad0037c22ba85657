//! What a run did: frames per kind and mutation, outcomes and verdicts per program, and the
//! violations, each with what it takes to reproduce it.
use std::{collections::BTreeMap, fmt, time::Duration};

use super::{
    generate::Kind,
    mutate::Mutation,
    oracle::{Outcome, Program},
};

/// An oracle violation, with the frame that caused it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The frame's number in the run (from 0): `--frames {index + 1}` with the same seed stops
    /// right after it.
    pub index: u64,
    pub program: Program,
    pub kind: Kind,
    pub mutation: Mutation,
    pub what: String,
    pub input: Vec<u8>,
    pub verdict: Option<u32>,
    pub output: Vec<u8>,
}

/// How many violations are kept in full.
pub const KEPT: usize = 10;

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    pub elapsed: Duration,
    /// Flows, replies and fragments entries each LRU map held.
    pub lru_entries: u32,
    pub kinds: BTreeMap<Kind, u64>,
    pub mutations: BTreeMap<Mutation, u64>,
    pub outcomes: BTreeMap<(Program, Outcome), u64>,
    pub verdicts: BTreeMap<(Program, u32), u64>,
    /// Malformed frames to a service port whose flow entry was checked before and after.
    pub state_checks: u64,
    pub violations: u64,
    pub first_violations: Vec<Violation>,
}

impl Report {
    pub fn runs(&self, program: Program) -> u64 {
        self.outcomes
            .iter()
            .filter(|((p, _), _)| *p == program)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn violate(&mut self, violation: Violation) {
        self.violations += 1;
        if self.first_violations.len() < KEPT {
            self.first_violations.push(violation);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verdict_label(program: Program, verdict: u32) -> String {
    let name = match (program, verdict) {
        (Program::Xdp, 2) => "XDP_PASS",
        (Program::Xdp, _) => "XDP_?",
        (_, 0) => "TC_ACT_OK",
        (_, 3) => "TC_ACT_PIPE",
        (_, 7) => "TC_ACT_REDIRECT",
        _ => "TC_ACT_?",
    };
    format!("{name} ({verdict})")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "frame #{} through {}: {} [{} / {}]",
            self.index,
            self.program.name(),
            self.what,
            self.kind.label(),
            self.mutation.label()
        )?;
        writeln!(f, "  in:  {}", hex(&self.input))?;
        if let Some(verdict) = self.verdict {
            writeln!(f, "  verdict {}", verdict_label(self.program, verdict))?;
            writeln!(f, "  out: {}", hex(&self.output))?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "l3lb fuzz: seed {}, {} frames in {secs:.1} s ({:.0} frames/s), LRU maps of {} entries",
            self.seed,
            self.frames,
            self.frames as f64 / secs.max(1e-9),
            self.lru_entries
        )?;
        writeln!(f, "\nframes by kind:")?;
        for (kind, n) in &self.kinds {
            writeln!(f, "  {:>10}  {}", n, kind.label())?;
        }
        writeln!(f, "\nmutations:")?;
        for (mutation, n) in &self.mutations {
            writeln!(f, "  {:>10}  {}", n, mutation.label())?;
        }
        for program in Program::ALL {
            writeln!(f, "\n{} ({} runs):", program.name(), self.runs(program))?;
            for ((p, outcome), n) in &self.outcomes {
                if *p == program {
                    writeln!(f, "  {:>10}  {}", n, outcome.label())?;
                }
            }
            for ((p, verdict), n) in &self.verdicts {
                if *p == program {
                    writeln!(
                        f,
                        "  {:>10}  verdict {}",
                        n,
                        verdict_label(program, *verdict)
                    )?;
                }
            }
        }
        writeln!(
            f,
            "\nmalformed frames to a service port checked for flow state: {}",
            self.state_checks
        )?;
        writeln!(f, "oracle violations: {}", self.violations)?;
        for violation in &self.first_violations {
            write!(f, "\n{violation}")?;
        }
        if self.violations > 0 {
            writeln!(
                f,
                "\nreproduce: cargo xtask fuzz --seed {} --frames {}",
                self.seed,
                self.first_violations
                    .first()
                    .map_or(self.frames, |v| v.index + 1)
            )?;
        }
        Ok(())
    }
}
