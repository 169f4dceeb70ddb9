//! `runcast-loadgen bench`: the scenarios of issue 11, each run against ws-gateway and then
//! against nats-server's own WebSocket listener with the same client, fresh servers every run,
//! one markdown table at the end.

use crate::conn::Target;
use crate::fanout::{self, Outcome, Run};
use crate::outcome::StormStats;
use crate::procfs;
use crate::publisher::{EVENT_BYTES, Load};
use crate::servers::{GatewayServer, NatsServer};
use crate::storm::{self, StormPlan};
use anyhow::Context as _;
use runcast_contract::{EntityId, StreamKind, Topology};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

const TENANT: &str = "acme";
const JWT_SECRET: &str = "runcast-loadgen-bench-secret";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Subscribed connections of scenarios a, b and c.
    #[arg(long, default_value_t = 5_000)]
    pub connections: usize,
    /// Events per second of scenario a (every connection gets every event).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Events per second of scenario b, the overload (default: twice --rate).
    #[arg(long)]
    pub overload_rate: Option<u64>,
    /// Events per second of scenario c, the latency one.
    #[arg(long, default_value_t = 10)]
    pub latency_rate: u64,
    /// Subscribed idle connections of scenario d (memory per connection).
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Subscribed idle connections of scenario f (one replica within 1 GiB; ws-gateway only).
    #[arg(long, default_value_t = 100_000)]
    pub many_idle_connections: usize,
    /// Scenario e: subscribed connections receiving a steady stream through the storm.
    #[arg(long, default_value_t = 1_000)]
    pub steady_connections: usize,
    /// Scenario e: events per second of the steady stream.
    #[arg(long, default_value_t = 50)]
    pub steady_rate: u64,
    /// Scenario e: connections of the storm, opened all at once, each resuming, then leaving.
    #[arg(long, default_value_t = 10_000)]
    pub storm_connections: usize,
    /// Scenario e: each storm client resumes from this many events before the stream's head.
    #[arg(long, default_value_t = 100)]
    pub storm_replay: u64,
    /// Scenario e: how long the steady connections are measured before the storm (after --warmup).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub storm_before: Duration,
    /// How long each loaded run publishes.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The start of the publishing left out of the measurement (at most half of --duration).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Executions the events are spread over.
    #[arg(long, default_value_t = 100)]
    pub executions: u64,
    /// Scenario h: subscribed connections offering `permessage-deflate`.
    #[arg(long, default_value_t = 1_000)]
    pub compressed_connections: usize,
    /// Scenario h: events per second.
    #[arg(long, default_value_t = 100)]
    pub compressed_rate: u64,
    /// Scenario h: steps in each event's state (what makes an event big, and compressible).
    #[arg(long, default_value_t = 20)]
    pub compressed_steps: usize,
    /// Scenarios to run, of a (peak), b (overload), c (latency), d (idle memory), e (storm),
    /// f (idle memory at 100,000 connections, ws-gateway only), g (idle memory of --idle-connections
    /// that each resumed --storm-replay events; ws-gateway only), h (compression: big events to
    /// clients offering `permessage-deflate`).
    #[arg(long, default_value = "a,b,c,d,e,f,g,h", value_delimiter = ',')]
    pub scenarios: Vec<char>,
    /// The core the measured server is pinned to (`taskset -c`); the client pins itself to
    /// --client-cpu. Pinning is skipped on a machine with one core.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// nats-server (default: `.tools/bin/nats-server`, as `make tools` installs it).
    #[arg(long, env = "RUNCAST_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,
    /// The ws-gateway binary (default: `ws-gateway` beside this binary, i.e. target/release).
    #[arg(long)]
    pub gateway: Option<PathBuf>,
}

impl BenchArgs {
    fn pinned(&self) -> bool {
        procfs::online_cores() >= 2
    }

    fn server_cpu(&self) -> Option<usize> {
        self.pinned().then_some(self.server_cpu)
    }
}

/// Pins the calling thread to `--client-cpu` — before the runtime starts, so every later thread
/// of the client too, and the servers it starts without `taskset` (they inherit it).
pub fn pin_client(args: &BenchArgs) -> anyhow::Result<()> {
    if !args.pinned() {
        return Ok(());
    }
    // `taskset -p` sets the affinity of that one thread (the main thread: its id is the pid).
    let status = std::process::Command::new("taskset")
        .args(["-pc", &args.client_cpu.to_string(), &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run taskset (util-linux) to pin the client")?;
    anyhow::ensure!(status.success(), "taskset could not pin the client to core {}", args.client_cpu);
    Ok(())
}

/// Open files the bench asks for: scenario f's 100,000 connections, on both ends, and then some.
const OPEN_FILES_WANTED: u64 = 250_000;
/// Descriptors a process needs besides its connections (NATS, listeners, logs, the runtime).
const OPEN_FILES_SPARE: u64 = 1_000;

/// Raises the open-files limit: to [`OPEN_FILES_WANTED`] where the process may raise its hard
/// limit (root), else the soft limit to the hard one. The servers started later inherit it.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if hard < OPEN_FILES_WANTED && setrlimit(Resource::RLIMIT_NOFILE, OPEN_FILES_WANTED, OPEN_FILES_WANTED).is_ok() {
        return Ok(OPEN_FILES_WANTED);
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// About a gateway event frame's size for a 200-byte event (the floor's frame).
const FLOOR_FRAME_BYTES: usize = 400;

/// The storm of scenario e is given up after this long.
const STORM_TIMEOUT: Duration = Duration::from_secs(120);

/// One line of the table: its name, its value in an outcome, how to print it.
struct Metric {
    name: &'static str,
    value: fn(&Outcome) -> Option<f64>,
    format: fn(f64) -> String,
}

const fn metric(name: &'static str, value: fn(&Outcome) -> Option<f64>, format: fn(f64) -> String) -> Metric {
    Metric { name, value, format }
}

const THROUGHPUT: &[Metric] = &[
    metric("deliveries/s", |o| Some(o.deliveries_per_second()), thousands),
    metric("server CPU, % of one core", Outcome::cpu_percent, one_decimal),
    metric("server CPU µs per delivery", Outcome::cpu_us_per_delivery, two_decimals),
    metric("p99 latency to the socket, ms", |o| Some(ms(o.wire_p99_us)), two_decimals),
    metric("gaps (events skipped, all connections)", |o| Some(o.gaps as f64), thousands),
    metric("events still on their way when the run stopped waiting", |o| Some(o.behind_at_end as f64), thousands),
    metric("duplicates", |o| Some(o.duplicates as f64), thousands),
];

const LATENCY: &[Metric] = &[
    metric("p50 latency to the socket, ms", |o| Some(ms(o.wire_p50_us)), two_decimals),
    metric("p99 latency to the socket, ms", |o| Some(ms(o.wire_p99_us)), two_decimals),
    metric("max latency to the socket, ms", |o| Some(ms(o.wire_max_us)), two_decimals),
    metric("p50 latency to the client's read, ms", |o| Some(ms(o.p50_us)), two_decimals),
    metric("p99 latency to the client's read, ms", |o| Some(ms(o.p99_us)), two_decimals),
    // One frame per wake-up at this rate: what each connection's wake-up costs, beside (a)'s batches.
    metric("server CPU µs per delivery", Outcome::cpu_us_per_delivery, two_decimals),
    metric("gaps / duplicates / still on their way at the end", |o| Some(o.faults() as f64), thousands),
];

const COMPRESSED: &[Metric] = &[
    metric("deliveries/s", |o| Some(o.deliveries_per_second()), thousands),
    metric("server CPU, % of one core", Outcome::cpu_percent, one_decimal),
    metric("server CPU µs per delivery", Outcome::cpu_us_per_delivery, two_decimals),
    metric("bytes on the wire per delivery", Outcome::wire_bytes_per_delivery, thousands),
    metric("p99 latency to the socket, ms", |o| Some(ms(o.wire_p99_us)), two_decimals),
    metric("gaps / duplicates / still on their way at the end", |o| Some(o.faults() as f64), thousands),
];

const IDLE: &[Metric] = &[
    metric("idle RSS per subscribed connection, KiB", Outcome::idle_kib_per_connection, one_decimal),
    metric("server RSS with all subscribed, MiB", |o| o.rss_subscribed_kib.map(|kib| kib as f64 / 1024.0), one_decimal),
];

const STORM: &[Metric] = &[
    metric("steady p99 latency to the socket before the storm, ms", |o| storm_ms(o, |s| s.before.p99_us), two_decimals),
    metric("steady max latency to the socket before the storm, ms", |o| storm_ms(o, |s| s.before.max_us), two_decimals),
    metric("steady p99 latency to the socket during the storm, ms", |o| storm_ms(o, |s| s.during.p99_us), two_decimals),
    metric(
        "steady p99.9 latency to the socket during the storm, ms",
        |o| storm_ms(o, |s| s.during.p999_us),
        two_decimals,
    ),
    metric("steady max latency to the socket during the storm, ms", |o| storm_ms(o, |s| s.during.max_us), two_decimals),
    metric(
        "stall: max during − p99 before, ms (target ≤ 100)",
        |o| o.storm.as_ref().map(StormStats::stall_ms),
        two_decimals,
    ),
    metric(
        "time until every storm client was resumed (NATS: subscribed), s",
        |o| o.storm.as_ref().map(|s| s.duration.as_secs_f64()),
        two_decimals,
    ),
    metric("storm clients failed", |o| o.storm.as_ref().map(|s| s.failed as f64), thousands),
    metric("storm clients that got `resync`", |o| o.storm.as_ref().map(|s| s.resynced as f64), thousands),
    metric(
        "server CPU during the storm, % of one core",
        |o| o.storm.as_ref().and_then(StormStats::server_cpu_percent),
        one_decimal,
    ),
    metric("steady gaps / duplicates / still on their way at the end", |o| Some(o.faults() as f64), thousands),
];

fn storm_ms(outcome: &Outcome, micros: fn(&StormStats) -> u64) -> Option<f64> {
    outcome.storm.as_ref().map(|storm| ms(micros(storm)))
}

/// The table's lines of a scenario.
fn metrics(scenario: char) -> &'static [Metric] {
    match scenario {
        'a' | 'b' => THROUGHPUT,
        'c' => LATENCY,
        'd' | 'f' | 'g' => IDLE,
        'h' => COMPRESSED,
        _ => STORM,
    }
}

/// One markdown row: the metric of both servers and their ratio.
fn row(title: &str, metric: &Metric, gateway: &Outcome, nats: &Outcome) -> String {
    let (g, n) = ((metric.value)(gateway), (metric.value)(nats));
    let cell = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), metric.format);
    let ratio = match (g, n) {
        (Some(g), Some(n)) if n != 0.0 => format!("{:.2}", g / n),
        _ => "–".to_owned(),
    };
    format!("| {title} | {} | {} | {} | {ratio} |", metric.name, cell(g), cell(n))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Gateway,
    Nats,
}

struct Scenario {
    id: char,
    title: String,
    connections: usize,
    rate: Option<u64>,
    storm: Option<StormPlan>,
    /// Steps in each event's state (0: the 200-byte events).
    steps: usize,
    /// The connections offer `permessage-deflate`.
    compression: bool,
}

pub async fn run(args: &BenchArgs, command_line: &str) -> anyhow::Result<String> {
    let open_files = raise_open_files_limit().context("cannot raise the open-files limit")?;
    let nats_binary = match &args.nats_server {
        Some(path) => path.clone(),
        None => std::env::current_dir()?.join(".tools/bin/nats-server"),
    };
    anyhow::ensure!(nats_binary.is_file(), "{} not found: run `make tools` first", nats_binary.display());
    let gateway_binary = match &args.gateway {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ws-gateway"),
    };
    anyhow::ensure!(
        gateway_binary.is_file(),
        "{} not found: cargo build --release -p ws-gateway",
        gateway_binary.display()
    );
    let overload = args.overload_rate.unwrap_or(args.rate * 2);
    let mut scenarios = Vec::new();
    for id in &args.scenarios {
        let mut storm = None;
        let (title, connections, rate) = match id {
            'a' => (
                format!(
                    "(a) {} connections × {} events/s ({} deliveries/s demanded)",
                    thousands(args.connections as f64),
                    args.rate,
                    thousands((args.connections as u64 * args.rate) as f64)
                ),
                args.connections,
                Some(args.rate),
            ),
            'b' => (
                format!(
                    "(b) the same at {overload} events/s ({:.1}× overload)",
                    overload as f64 / args.rate.max(1) as f64
                ),
                args.connections,
                Some(overload),
            ),
            'c' => (
                format!("(c) {} connections × {} events/s", thousands(args.connections as f64), args.latency_rate),
                args.connections,
                Some(args.latency_rate),
            ),
            'd' => (
                format!("(d) {} idle subscribed connections", thousands(args.idle_connections as f64)),
                args.idle_connections,
                None,
            ),
            'f' => {
                // Each end holds one descriptor per connection, within the limit both inherit.
                let connections = args.many_idle_connections.min(open_files.saturating_sub(OPEN_FILES_SPARE) as usize);
                let capped = if connections < args.many_idle_connections {
                    format!(
                        "; {} asked, capped by this machine's open-files limit ({open_files}, not raisable without \
                         CAP_SYS_RESOURCE)",
                        thousands(args.many_idle_connections as f64)
                    )
                } else {
                    String::new()
                };
                (
                    format!(
                        "(f) {} idle subscribed connections (ws-gateway only: nats-server's default limit is 65,536{capped})",
                        thousands(connections as f64)
                    ),
                    connections,
                    None,
                )
            }
            'e' => {
                storm = Some(StormPlan {
                    connections: args.storm_connections,
                    before: args.storm_before,
                    replay: args.storm_replay,
                    timeout: STORM_TIMEOUT,
                });
                (
                    format!(
                        "(e) storm: {} connections at once, each resuming {} events back, beside {} steady × {} events/s",
                        thousands(args.storm_connections as f64),
                        args.storm_replay,
                        thousands(args.steady_connections as f64),
                        args.steady_rate
                    ),
                    args.steady_connections,
                    Some(args.steady_rate),
                )
            }
            'g' => (
                format!(
                    "(g) {} idle subscribed connections, each after resuming {} events (ws-gateway only: NATS has no \
                     resume)",
                    thousands(args.idle_connections as f64),
                    args.storm_replay
                ),
                args.idle_connections,
                None,
            ),
            'h' => (
                format!(
                    "(h) compression: {} connections offering permessage-deflate × {} events/s, each with {} steps in \
                     its state",
                    thousands(args.compressed_connections as f64),
                    args.compressed_rate,
                    args.compressed_steps
                ),
                args.compressed_connections,
                Some(args.compressed_rate),
            ),
            other => anyhow::bail!("unknown scenario '{other}': use a, b, c, d, e, f, g or h"),
        };
        let compression = *id == 'h';
        let steps = if compression { args.compressed_steps } else { 0 };
        scenarios.push(Scenario { id: *id, title, connections, rate, storm, steps, compression });
    }

    let mut results = Vec::new();
    for scenario in &scenarios {
        let mut pair = Vec::new();
        for server in [Server::Gateway, Server::Nats] {
            if matches!(scenario.id, 'f' | 'g') && server == Server::Nats {
                pair.push(Outcome::default()); // not run: every cell "–"
                continue;
            }
            let outcome = measure(args, scenario, server, &nats_binary, &gateway_binary).await?;
            eprintln!("{}", summary(scenario, &outcome));
            pair.push(outcome);
        }
        results.push(pair);
    }
    let floor = if args.scenarios.contains(&'c') {
        let interval = Duration::from_secs(1) / u32::try_from(args.latency_rate.max(1)).unwrap_or(u32::MAX);
        let client_cpu = args.pinned().then_some(args.client_cpu);
        Some(crate::floor::measure(args.connections, FLOOR_FRAME_BYTES, interval, args.server_cpu(), client_cpu)?)
    } else {
        None
    };

    let mut out = String::new();
    writeln!(out, "machine: {}", procfs::machine())?;
    writeln!(out, "command: {command_line}")?;
    writeln!(out, "commit: {}", commit())?;
    let pinning = if args.pinned() {
        format!(
            "the measured server pinned to core {} (`taskset -c {}`), the client and its publisher to core {}; \
             in the ws-gateway runs nats-server shares core {} with the client, in the NATS WS runs nats-server \
             is the measured server",
            args.server_cpu, args.server_cpu, args.client_cpu, args.client_cpu
        )
    } else {
        "not pinned (one core)".to_owned()
    };
    let backlog = procfs::somaxconn().map_or_else(|| "unknown".to_owned(), |max| thousands(max as f64));
    writeln!(
        out,
        "pinning: {pinning}; open-files limit {open_files}; listen backlog capped by net.core.somaxconn at {backlog} \
         (scenario e connects {} clients at once)",
        thousands(args.storm_connections as f64)
    )?;
    writeln!(
        out,
        "load: {EVENT_BYTES}-byte `execution.step.started` events (never coalesced) over {} executions of one tenant, \
         published straight into JetStream; every connection subscribes to all of them; {} publishing per run, \
         the first {} not measured; server CPU = utime+stime of /proc/<pid>/stat over the measured window \
         (nats-server's includes storing the events in JetStream)",
        args.executions,
        humanize(args.duration),
        humanize(args.warmup.min(args.duration / 2))
    )?;
    if args.scenarios.contains(&'h') {
        use prost::Message as _;
        let marker = crate::frames::Marker { seq: 1, published_ns: crate::publisher::now_ns() };
        let event_bytes = crate::publisher::event(TENANT, "e-1", marker, args.compressed_steps).encoded_len();
        writeln!(
            out,
            "compression (h): events whose state lists {} steps ({event_bytes} bytes of protobuf, which NATS carries as \
             they are; ws-gateway sends the event as JSON, about twice that); every connection offers \
             `permessage-deflate` without context takeover and both servers accept it (nats-server with \
             `compression: true` in its `websocket` block, set in every run: the other scenarios' clients offer \
             nothing, so it changes nothing there); ws-gateway compresses each event once for all its connections, \
             nats-server compresses every message it writes; bytes on the wire per delivery = what the clients read \
             from their sockets over the window ÷ deliveries; the client inflates every message to check it",
            args.compressed_steps
        )?;
    }
    if args.scenarios.contains(&'e') {
        writeln!(
            out,
            "storm (e): the steady connections subscribe first; after {} of warm-up and {} measured, {} more \
             connections are opened at once (no pacing), each subscribing with `since_offset` = head − {} (the \
             gateway replays those events from JetStream, then answers `subscribed`), then unsubscribing and closing; \
             \"during\" = the steady deliveries in flight at any time between the first storm connect and the last \
             `subscribed`; publishing goes on 0.5 s after it. NATS has no resume: its storm clients connect, SUB, UNSUB \
             and close, nothing replayed",
            humanize(args.warmup),
            humanize(args.storm_before),
            thousands(args.storm_connections as f64),
            args.storm_replay
        )?;
    }
    writeln!(out)?;
    writeln!(out, "| scenario | metric | ws-gateway | NATS WS | ws-gateway / NATS |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for (scenario, pair) in scenarios.iter().zip(&results) {
        for (i, metric) in metrics(scenario.id).iter().enumerate() {
            let title = if i == 0 { scenario.title.as_str() } else { "" };
            writeln!(out, "{}", row(title, metric, &pair[0], &pair[1]))?;
        }
    }
    if let Some(floor) = floor {
        writeln!(
            out,
            "\nraw floor beside (c), same machine, same pinning: one thread writing a {FLOOR_FRAME_BYTES}-byte frame to \
             each of {} loopback TCP sockets in turn ({} passes at the latency rate; a Tokio task per socket reads them on \
             the other core): median pass {:.2} ms, slowest {:.2} ms, {:.2} µs per write. On loopback the writer also runs \
             the receiver's TCP input, so the last socket has the frame when the pass ends: one core fanning an event out \
             to these sockets cannot have a p99 latency to the socket below ~0.99 × the pass. As the reading tasks \
             see it (from the pass's start to the read that has the frame, {} frames): p50 {:.2} ms, p99 {:.2} ms, the \
             floor for (c)'s p99 as this client measures it.",
            thousands(floor.connections as f64),
            crate::floor::PASSES,
            floor.median_pass.as_secs_f64() * 1e3,
            floor.slowest_pass.as_secs_f64() * 1e3,
            floor.micros_per_write(),
            thousands(floor.client_latency.len() as f64),
            floor.client_latency.value_at_quantile(0.5) as f64 / 1e3,
            floor.client_latency.value_at_quantile(0.99) as f64 / 1e3,
        )?;
    }
    writeln!(out)?;
    for (scenario, pair) in scenarios.iter().zip(&results) {
        for outcome in pair.iter().filter(|outcome| outcome.connections > 0) {
            writeln!(out, "- {}", summary(scenario, outcome))?;
        }
    }
    Ok(out)
}

async fn measure(
    args: &BenchArgs,
    scenario: &Scenario,
    server: Server,
    nats_binary: &std::path::Path,
    gateway_binary: &std::path::Path,
) -> anyhow::Result<Outcome> {
    let topology = Topology::unprefixed();
    let load = scenario.rate.map(|events_per_second| Load {
        tenant: TENANT.to_owned(),
        executions: args.executions,
        events_per_second,
        duration: args.duration,
        steps: scenario.steps,
    });
    let mut run = Run {
        target: Target::Gateway {
            addr: ([127, 0, 0, 1], 0).into(),
            jwt_secret: JWT_SECRET.to_owned(),
            tenant: TENANT.to_owned(),
        },
        connections: scenario.connections,
        server_pid: None,
        nats_url: String::new(),
        topology: topology.clone(),
        load,
        warmup: args.warmup,
        // The replay is published in one second, then resumed by every connection.
        backlog: (scenario.id == 'g').then(|| Load {
            tenant: TENANT.to_owned(),
            executions: args.executions,
            events_per_second: args.storm_replay,
            duration: Duration::from_secs(1),
            steps: 0,
        }),
        compression: scenario.compression,
    };
    let nats = NatsServer::start(nats_binary, if server == Server::Nats { args.server_cpu() } else { None }).await?;
    run.nats_url = nats.url();
    // Kept until the run is over.
    let _gateway = match server {
        Server::Gateway => {
            let gateway = GatewayServer::start(gateway_binary, args.server_cpu(), &nats.url(), JWT_SECRET).await?;
            run.target =
                Target::Gateway { addr: gateway.addr, jwt_secret: JWT_SECRET.to_owned(), tenant: TENANT.to_owned() };
            run.server_pid = gateway.pid();
            Some(gateway)
        }
        Server::Nats => {
            create_stream(&nats.url(), &topology).await?;
            let tenant = EntityId::parse("tenant", TENANT)?;
            run.target = Target::Nats {
                addr: nats.ws_addr(),
                subject: topology.tenant_subjects(StreamKind::Executions, &tenant),
            };
            run.server_pid = nats.pid();
            None
        }
    };
    match &scenario.storm {
        Some(plan) => storm::run(&run, plan).await,
        None => fanout::run(&run).await,
    }
}

/// The executions stream as the gateway provisions it (file storage, one replica), for the runs
/// without a gateway.
pub async fn create_stream(nats_url: &str, topology: &Topology) -> anyhow::Result<()> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: topology.stream_name(StreamKind::Executions),
            subjects: vec![topology.stream_subjects(StreamKind::Executions)],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    Ok(())
}

fn summary(scenario: &Scenario, outcome: &Outcome) -> String {
    let mut line = format!(
        "{} {}: {}/{} subscribed, {} published, {} delivered ({} in the {:.1} s window), gaps {}, duplicates {}, \
         offset gaps {}, offset duplicates {}, resyncs {}, {} still on their way after waiting {:.1} s, \
         {} connections got every event, {} ended early, \
         publisher behind its schedule by {} ms at most, client CPU {} of its core",
        scenario.title.split(' ').next().unwrap_or_default(),
        outcome.server,
        outcome.subscribed,
        outcome.connections,
        thousands(outcome.published.last_seq as f64),
        thousands(outcome.delivered as f64),
        thousands(outcome.delivered_in_window as f64),
        outcome.window.as_secs_f64(),
        outcome.gaps,
        outcome.duplicates,
        outcome.offset_gaps,
        outcome.offset_duplicates,
        outcome.resyncs,
        thousands(outcome.behind_at_end as f64),
        outcome.drain.as_secs_f64(),
        outcome.complete_connections,
        outcome.ended_early,
        outcome.published.max_lag.as_millis(),
        outcome.client_cpu_percent().map_or_else(|| "–".to_owned(), |percent| format!("{percent:.0} %")),
    );
    if outcome.published.failures > 0 {
        let _ = write!(line, ", {} publishes failed", outcome.published.failures);
    }
    if let Some(storm) = &outcome.storm {
        let _ = write!(
            line,
            "; storm: {}/{} {} in {:.2} s{}, {} events delivered to storm clients, their gaps {}, duplicates {}, \
             {} resynced; steady deliveries timed before it: {}",
            storm.resumed,
            storm.connections,
            if storm.since_offset.is_some() { "resumed" } else { "subscribed" },
            storm.duration.as_secs_f64(),
            storm.since_offset.map_or_else(String::new, |offset| format!(" from offset {offset}")),
            thousands(storm.delivered as f64),
            storm.gaps.map_or_else(|| "–".to_owned(), |gaps| gaps.to_string()),
            storm.duplicates,
            storm.resynced,
            thousands(storm.before.deliveries as f64),
        );
        if !storm.errors.is_empty() {
            let _ = write!(line, "; first storm errors: {}", storm.errors.join(" | "));
        }
    }
    if !outcome.errors.is_empty() {
        let _ = write!(line, "; first errors: {}", outcome.errors.join(" | "));
    }
    line
}

fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{head} with uncommitted changes") } else { head }
        }
        None => "unknown".to_owned(),
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn humanize(duration: Duration) -> String {
    format!("{:.0} s", duration.as_secs_f64())
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn one_decimal(value: f64) -> String {
    format!("{value:.1}")
}

fn two_decimals(value: f64) -> String {
    format!("{value:.2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_the_table() {
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(37_123.6), "37,124");
        assert_eq!(thousands(999.0), "999");
    }
}
