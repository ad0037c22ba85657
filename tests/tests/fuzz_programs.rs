//! The fuzzer (`l3lb_tests::fuzz`) on 100 000 frames through the four fast-path programs: no
//! oracle violation. The seed is random unless `L3LB_FUZZ_SEED` names one; a failure prints it
//! with the failing frames, and `cargo xtask fuzz --seed S --frames N` replays the run.
use l3lb_tests::{fuzz, privileged};

const FRAMES: u64 = 100_000;

#[test]
fn programs_survive_fuzzed_frames() {
    if !privileged("programs_survive_fuzzed_frames") {
        return;
    }
    let seed = match std::env::var("L3LB_FUZZ_SEED") {
        Ok(text) => text.parse().expect("L3LB_FUZZ_SEED is a number"),
        Err(_) => fuzz::random_seed(),
    };
    eprintln!("fuzzing {FRAMES} frames with seed {seed}");
    let report = fuzz::run(fuzz::Options::new(FRAMES, seed));
    eprintln!("{report}");
    // First, so that a failure shows the violations (with the frames) rather than a count.
    assert_eq!(
        report.violations, 0,
        "seed {seed}: the oracle found violations; replay with \
         `cargo xtask fuzz --seed {seed} --frames {FRAMES}`:\n{report}"
    );
    assert_eq!(report.frames, FRAMES);
    for program in fuzz::oracle::Program::ALL {
        assert_eq!(
            report.runs(program),
            FRAMES,
            "{}: every frame ran",
            program.name()
        );
    }
    // Each outcome the oracle knows was reached, so the run tested what it claims to.
    for outcome in [
        fuzz::oracle::Outcome::Steered,
        fuzz::oracle::Outcome::FragmentSteered,
        fuzz::oracle::Outcome::IcmpToPod,
        fuzz::oracle::Outcome::Translated,
        fuzz::oracle::Outcome::IcmpFromPod,
    ] {
        assert!(
            report
                .outcomes
                .iter()
                .any(|((_, o), n)| *o == outcome && *n > 0),
            "no frame reached {:?}: {report}",
            outcome
        );
    }
}
