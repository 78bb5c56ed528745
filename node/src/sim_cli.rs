//! `settle sim`: runs the deterministic simulator over many seeds (in parallel, each seed
//! single-threaded and reproducible), shows progress, and reports failures with the seed to
//! replay: `settle sim --seed S --trace`.

use settle_chaos::faults::FaultClass;
use settle_chaos::run::{run_seed, RunOptions, RunReport};
use settle_cluster::planted::PlantedBug;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct SimFlags {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Replay one seed (with --trace, print its whole event trace).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub trace: bool,
    /// Nodes in the simulated cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Shards in the simulated cluster.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Which faults: all, net, disk, crash (or none).
    #[arg(long, default_value = "all")]
    pub faults: FaultClass,
    /// Virtual milliseconds of workload under faults per seed.
    #[arg(long, default_value_t = 10_000)]
    pub chaos_ms: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Plant one known bug (`AckBeforeFlush`, `DoubleCredit`, ...; see README) and report how
    /// often the seeds catch it and by which checker, instead of failing on it. Needs a build
    /// with `--features planted-bugs`.
    #[arg(long)]
    pub planted: Option<PlantedBug>,
}

fn options(flags: &SimFlags, seed: u64) -> RunOptions {
    let mut options = RunOptions::new(seed);
    options.nodes = flags.nodes;
    options.shards = flags.shards;
    options.faults = flags.faults;
    options.chaos_ms = flags.chaos_ms;
    options.planted = flags.planted.unwrap_or_default();
    options
}

pub fn run(flags: SimFlags) -> anyhow::Result<()> {
    if !(3..=7).contains(&flags.nodes) {
        anyhow::bail!("--nodes must be between 3 and 7");
    }
    if flags.planted.is_some_and(|bug| bug != PlantedBug::None) && !settle_cluster::planted::COMPILED {
        anyhow::bail!(
            "--planted needs the known bugs compiled in, which production builds never have: \
             cargo run --release --features planted-bugs -- sim --planted ..."
        );
    }
    // Core assertions are caught per seed and reported as `core_assertion`; keep the default
    // panic message off the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(seed) = flags.seed {
        return replay(&flags, seed);
    }
    let threads = flags.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let next = AtomicU64::new(flags.start);
    let done = AtomicU64::new(0);
    let end = flags.start.saturating_add(flags.seeds);
    let failures: Mutex<Vec<RunReport>> = Mutex::new(Vec::new());
    let totals: Mutex<(u64, u64, u64, u64, u64, u64)> = Mutex::new((0, 0, 0, 0, 0, 0));
    let moves: Mutex<(u64, u64, u64)> = Mutex::new((0, 0, 0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let report = run_seed(&options(&flags, seed));
                {
                    let mut totals = totals.lock().expect("totals");
                    totals.0 += report.virtual_ms;
                    if report.virtual_ms > totals.1 {
                        totals.1 = report.virtual_ms;
                        totals.2 = seed;
                    }
                    totals.3 += report.operations;
                    totals.4 += report.backups_checked;
                    totals.5 += report.backups_abandoned;
                    let mut moves = moves.lock().expect("moves");
                    moves.0 += report.moves_done;
                    moves.1 += report.moves_abandoned;
                    moves.2 += report.replicas_rebuilt;
                }
                if !report.passed() {
                    failures.lock().expect("failures").push(report);
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        loop {
            let finished = done.load(Ordering::Relaxed);
            if last_draw.elapsed() >= Duration::from_millis(200) || finished == flags.seeds {
                draw_progress(finished, flags.seeds, started.elapsed(), failures.lock().expect("failures").len());
                last_draw = Instant::now();
            }
            if finished == flags.seeds {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    eprintln!();
    let elapsed = started.elapsed();
    let failures = failures.into_inner().expect("failures");
    let (virtual_ms, longest_ms, longest_seed, operations, backups_checked, backups_abandoned) = totals.into_inner().expect("totals");
    let (moves_done, moves_abandoned, rebuilt) = moves.into_inner().expect("moves");
    if let Some(bug) = flags.planted {
        print_catch_rate(&flags, bug, &failures);
        return Ok(());
    }
    for report in &failures {
        print_failure(&flags, report);
    }
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "sim: {} seeds from {} ({} nodes, {} shards, faults {}) in {:.1} s: {:.1} seeds/s, {} failures; {} client operations; {backups_checked} online backups restored and checked ({backups_abandoned} abandoned); {moves_done} replica moves done ({moves_abandoned} abandoned), {rebuilt} quarantined replicas rebuilt; virtual time {:.0}x real time; longest run {:.1} s virtual (seed {longest_seed})",
        flags.seeds,
        flags.start,
        flags.nodes,
        flags.shards,
        flags.faults,
        seconds,
        flags.seeds as f64 / seconds,
        failures.len(),
        operations,
        Duration::from_millis(virtual_ms).as_secs_f64() / seconds,
        Duration::from_millis(longest_ms).as_secs_f64(),
    );
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|report| report.seed.to_string()).collect();
        anyhow::bail!("{} seeds failed: {}", failures.len(), seeds.join(", "));
    }
    Ok(())
}

/// With a planted bug, failures are the point: how many seeds caught it, the first, and by which
/// checker (the simulator's detection rate for that class of bug).
fn print_catch_rate(flags: &SimFlags, bug: PlantedBug, failures: &[RunReport]) {
    let mut checkers: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for report in failures {
        *checkers.entry(report.violation.as_ref().map_or("?", |violation| violation.checker)).or_default() += 1;
    }
    let first = failures.iter().map(|report| report.seed).min();
    let by: Vec<String> = checkers.iter().map(|(checker, count)| format!("{checker} {count}")).collect();
    println!(
        "planted {bug}: caught in {} of {} seeds ({:.1}%), first at seed {}; by checker: {}",
        failures.len(),
        flags.seeds,
        100.0 * failures.len() as f64 / flags.seeds.max(1) as f64,
        first.map_or("none".to_string(), |seed| seed.to_string()),
        if by.is_empty() { "none".to_string() } else { by.join(", ") },
    );
}

fn draw_progress(done: u64, total: u64, elapsed: Duration, failures: usize) {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    eprint!("\r[{bar}] {done}/{total} seeds  {rate:.1} seeds/s  {failures} failures ");
    let _ = std::io::stderr().flush();
}

fn print_failure(flags: &SimFlags, report: &RunReport) {
    let violation = report.violation.as_ref().expect("a failure");
    println!("FAIL seed {}: checker {} — {}", report.seed, violation.checker, violation.message);
    println!("  last events:");
    for line in report.trace.iter().rev().take(20).rev() {
        println!("    {line}");
    }
    println!(
        "  replay: settle sim --seed {} --trace --nodes {} --shards {} --faults {} --chaos-ms {}",
        report.seed, flags.nodes, flags.shards, flags.faults, flags.chaos_ms
    );
}

fn replay(flags: &SimFlags, seed: u64) -> anyhow::Result<()> {
    let mut options = options(flags, seed);
    options.verbose = flags.trace;
    let report = run_seed(&options);
    if flags.trace {
        for line in &report.trace {
            println!("{line}");
        }
    }
    println!(
        "seed {seed}: {} in {:.1} s virtual ({} events, {} client operations, {} posted, {} rejected, {} backups checked, {} abandoned, {} replica moves done, {} abandoned, {} rebuilt), trace hash {:016x}, {:?} wall",
        if report.passed() { "passed" } else { "FAILED" },
        report.virtual_ms as f64 / 1000.0,
        report.events,
        report.operations,
        report.posted,
        report.rejected,
        report.backups_checked,
        report.backups_abandoned,
        report.moves_done,
        report.moves_abandoned,
        report.replicas_rebuilt,
        report.trace_hash,
        report.wall,
    );
    if let Some(violation) = &report.violation {
        anyhow::bail!("checker {} — {}", violation.checker, violation.message);
    }
    Ok(())
}
