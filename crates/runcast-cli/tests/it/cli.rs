use nix::sys::signal::Signal;
use runcast_testkit::{Infra, Isolation, ServiceProcess, eventually};
use serde_json::Value;
use std::process::Output;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const SECRET: &str = "cli-test-secret";

struct Stack {
    infra: Infra,
    isolation: Isolation,
    api: ServiceProcess,
    _persister: ServiceProcess,
    gateway: ServiceProcess,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with_api(&[]).await
    }

    /// The stack with extra settings for execution-api.
    async fn start_with_api(api_settings: &[(&str, &str)]) -> Self {
        let infra = Infra::start().await.expect("servers");
        let isolation = infra.isolate().await.expect("isolation");
        let services = infra.services(&isolation, SECRET);
        let (mut api, persister, gateway) = tokio::join!(
            services.spawn("execution-api", api_settings),
            services.spawn("event-persister", &[]),
            services.spawn("ws-gateway", &[]),
        );
        api.addr("grpc_addr").await.expect("grpc");
        Self { infra, isolation, api, _persister: persister, gateway }
    }

    /// A gateway on `http_addr` (a restarted one, on the address its clients know).
    async fn gateway_env(&self, http_addr: &str) -> ServiceProcess {
        self.infra.services(&self.isolation, SECRET).spawn("ws-gateway", &[("RUNCAST_HTTP_ADDR", http_addr)]).await
    }

    async fn cli_env(&mut self) -> Vec<(String, String)> {
        let grpc = self.api.addr("grpc_addr").await.expect("grpc");
        let gateway = self.gateway.http_url("").replace("http://", "ws://");
        vec![
            ("RUNCAST_API_URL".into(), format!("http://{grpc}")),
            ("RUNCAST_GATEWAY_URL".into(), gateway),
            ("RUNCAST_JWT_SECRET".into(), SECRET.into()),
            ("RUNCAST_TENANT".into(), "acme".into()),
        ]
    }
}

fn runcast(env: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runcast"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)));
    command.kill_on_drop(true);
    command
}

async fn run(env: &[(String, String)], args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), runcast(env, args).output())
        .await
        .unwrap_or_else(|_| panic!("runcast {args:?} did not finish"))
        .expect("runs")
}

/// Runs, expects success, returns stdout's JSON lines.
async fn json_lines(env: &[(String, String)], args: &[&str]) -> Vec<Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let output = run(env, &full).await;
    assert!(output.status.success(), "runcast {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect()
}

async fn one(env: &[(String, String)], args: &[&str]) -> Value {
    let mut lines = json_lines(env, args).await;
    assert_eq!(lines.len(), 1, "runcast {args:?} printed {lines:?}");
    lines.remove(0)
}

#[tokio::test]
async fn every_subcommand_works_against_the_real_stack() {
    let mut stack = Stack::start().await;
    let env = stack.cli_env().await;

    let token = one(&env, &["token", "--roles", "viewer,agent", "--ttl", "10m"]).await;
    let claims = token["token"].as_str().expect("token").split('.').nth(1).expect("payload").to_owned();
    assert!(!claims.is_empty());

    let created = one(
        &env,
        &["exec", "create", "--workflow", "deploy", "--label", "team=infra", "--input", r#"{"branch":"main"}"#],
    )
    .await;
    let id = created["execution_id"].as_str().expect("id").to_owned();
    assert_eq!((created["status"].as_str(), created["labels"]["team"].as_str()), (Some("pending"), Some("infra")));
    assert_eq!(created["input"]["branch"], "main");
    let again = one(&env, &["exec", "create", "--workflow", "deploy", "--key", "k-1"]).await;
    assert_eq!(
        one(&env, &["exec", "create", "--workflow", "deploy", "--key", "k-1"]).await["execution_id"],
        again["execution_id"]
    );

    assert_eq!(one(&env, &["exec", "status", &id, "running"]).await["status"], "running");
    assert_eq!(one(&env, &["exec", "step", &id, "build", "running", "--name", "Build"]).await["current_step"], "build");
    assert_eq!(one(&env, &["exec", "progress", &id, "40", "--message", "halfway"]).await["progress"], 40);
    // A command run again with its --request-id (a retried script step) is applied once: the same
    // version both times, where running it again without would be a new change.
    let retried = ["exec", "step", &id, "fetch", "completed", "--request-id", "fetch-done"];
    let first = one(&env, &retried).await;
    one(&env, &["exec", "progress", &id, "45"]).await;
    let second = one(&env, &retried).await;
    assert_eq!((second["version"].as_u64(), second["progress"].as_u64()), (first["version"].as_u64(), Some(40)));
    assert!(!run(&env, &retried[..5]).await.status.success(), "completing the step again without the id is refused");
    let logged = one(&env, &["logs", "append", &id, "first line", "second line"]).await;
    assert_eq!(logged["last_line_number"], 2);
    let lines_once = ["logs", "append", &id, "retried line", "--request-id", "retried-lines"];
    assert_eq!(one(&env, &lines_once).await["last_line_number"], 3);
    assert_eq!(one(&env, &lines_once).await["last_line_number"], 3, "appended once");
    let mut piped = runcast(&env, &["logs", "append", &id, "--stderr"]);
    piped.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = piped.spawn().expect("spawn");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"from stdin 1\nfrom stdin 2\n").await.expect("write");
    }
    let output = child.wait_with_output().await.expect("waits");
    assert!(String::from_utf8_lossy(&output.stdout).contains("last line number 5"), "{output:?}");

    assert_eq!(one(&env, &["exec", "pause", &id, "--reason", "lunch"]).await["status"], "paused");
    assert_eq!(one(&env, &["exec", "resume", &id]).await["status"], "running");
    assert_eq!(
        one(&env, &["exec", "request-approval", &id, "release", "--reason", "prod", "--expires-in", "1h"]).await["status"],
        "blocked"
    );
    assert_eq!(one(&env, &["exec", "approve", &id, "release", "--comment", "ok"]).await["status"], "running");
    assert_eq!(one(&env, &["exec", "status", &id, "completed"]).await["status"], "completed");
    assert_eq!(one(&env, &["exec", "get", &id]).await["progress"], 100);

    let other =
        one(&env, &["exec", "create", "--workflow", "deploy"]).await["execution_id"].as_str().expect("id").to_owned();
    one(&env, &["exec", "status", &other, "running"]).await;
    one(&env, &["exec", "request-approval", &other, "release"]).await;
    assert_eq!(one(&env, &["exec", "deny", &other, "release"]).await["status"], "failed");
    let third =
        one(&env, &["exec", "create", "--workflow", "etl"]).await["execution_id"].as_str().expect("id").to_owned();
    assert_eq!(one(&env, &["exec", "cancel", &third, "--reason", "no longer needed"]).await["status"], "cancelled");

    // Refused commands: a one-line reason and a non-zero exit.
    let refused = run(&env, &["exec", "status", &id, "running"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FailedPrecondition") && stderr.contains("completed"), "{stderr}");

    // Lists, history and agents come from the read model: wait until the persister has applied
    // the last command of this test (the denial that failed `other`), each list in its own time.
    let failed = eventually("the denied execution listed as failed", Duration::from_secs(20), || {
        let env = env.clone();
        async move {
            let lines = json_lines(&env, &["exec", "list", "--status", "failed"]).await;
            (!lines.is_empty()).then_some(lines)
        }
    })
    .await
    .expect("listed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["execution_id"], other.as_str());
    let listed = eventually("the list to show all three", Duration::from_secs(20), || {
        let env = env.clone();
        async move {
            let lines = json_lines(&env, &["exec", "list", "--workflow", "deploy"]).await;
            (lines.len() == 3).then_some(lines)
        }
    })
    .await
    .expect("listed");
    assert!(listed.iter().all(|e| e["workflow_id"] == "deploy"));
    let history = eventually("the whole history of the first execution", Duration::from_secs(20), || {
        let env = env.clone();
        let id = id.clone();
        async move {
            let history = json_lines(&env, &["events", "--execution", &id]).await;
            // The execution's versions 1..n with no hole (log events are numbered apart): two
            // persister writers may commit out of order.
            let versions = history.iter().filter(|e| e["type"] != "log.appended").map(|e| &e["version"]);
            let complete = versions.enumerate().all(|(i, version)| *version == i + 1);
            (complete && history.last()?["type"] == "execution.completed").then_some(history)
        }
    })
    .await
    .expect("history");
    assert_eq!(history[0]["type"], "execution.created");
    let only_steps = json_lines(&env, &["events", "--execution", &id, "--type", "step.started"]).await;
    assert_eq!(only_steps.len(), 1);

    let simulated = run(&env, &["simulate", "--agents", "2", "--rate", "4", "--duration", "3s"]).await;
    assert!(simulated.status.success(), "{}", String::from_utf8_lossy(&simulated.stderr));
    let summary = String::from_utf8_lossy(&simulated.stderr);
    assert!(summary.lines().any(|l| l.starts_with("agents=2 running=")), "one line per second: {summary}");
    let agents = eventually("the simulated agents in the list", Duration::from_secs(20), || {
        let env = env.clone();
        async move {
            let agents = json_lines(&env, &["agents"]).await;
            (agents.len() == 2).then_some(agents)
        }
    })
    .await
    .expect("agents listed");
    assert!(agents.iter().all(|a| a["agent_id"].as_str().is_some_and(|id| id.starts_with("sim-"))));

    // logs tail replays an execution's log lines through the gateway.
    let tail = json_lines(&env, &["logs", "tail", &id, "--since-offset", "0", "--count", "3"]).await;
    assert_eq!(tail.len(), 3);
    assert_eq!(tail[0]["data"]["payload"]["logs_appended"]["lines"][0]["text"], "first line");
    assert_eq!(tail[1]["data"]["request_id"], "retried-lines-0", "the retried append, once");
    assert_eq!(tail[2]["data"]["payload"]["logs_appended"]["lines"][1]["stream"], "stderr");
}

/// A `runcast --json watch executions` process whose stdout lines arrive on a channel. (Piped
/// `watch` prints text lines since issue 14; the frames these tests read are its `--json` form.)
fn watch(env: &[(String, String)]) -> (tokio::process::Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    spawn_lines(env, &["--json", "watch", "executions"])
}

/// A `runcast` process whose stdout and stderr lines arrive on channels.
fn spawn_lines(
    env: &[(String, String)],
    args: &[&str],
) -> (tokio::process::Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut command = runcast(env, args);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("watch starts");
    let lines = |reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        let (sender, receiver) = mpsc::channel(100_000);
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send(line).await.is_err() {
                    break;
                }
            }
        });
        receiver
    };
    let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
    let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
    (child, stdout, stderr)
}

async fn next_offsets(stdout: &mut mpsc::Receiver<String>, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.recv())
            .await
            .expect("an event in time")
            .expect("watch still running");
        let frame: Value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        if frame["type"] == "snapshot" {
            continue; // the current state watch starts with: entities, not events
        }
        offsets.push(frame["offset"].as_u64().expect("event frames carry offsets"));
    }
    offsets
}

#[tokio::test]
async fn watch_follows_a_simulation_and_resumes_after_its_gateway_restarts() {
    let mut stack = Stack::start().await;
    let mut env = stack.cli_env().await;
    // Tokens that live 6 s (renewed after 3 s): this watch outlives several, so it must renew them in-band (the
    // gateway closes a connection whose token expired, and watch would exit).
    env.push(("RUNCAST_TOKEN_TTL".into(), "6s".into()));
    let (_watch, mut stdout, mut stderr) = watch(&env);
    let mut simulate = runcast(&env, &["simulate", "--agents", "2", "--rate", "5"]).spawn().expect("simulate");

    let before = next_offsets(&mut stdout, 20).await;
    assert!(before.windows(2).all(|w| w[0] < w[1]), "offsets increase: {before:?}");

    // Restart the gateway on the same address; the watch reconnects and resumes.
    let address = stack.gateway.http_url("").trim_start_matches("http://").to_owned();
    stack.gateway.signal(Signal::SIGTERM).expect("stop gateway");
    stack.gateway.wait_exit(Duration::from_secs(15)).await.expect("gateway exits");
    stack.gateway = stack.gateway_env(&address).await;
    let restarted = std::time::Instant::now();

    let after = next_offsets(&mut stdout, 20).await;
    let said = eventually("watch to say it reconnected", Duration::from_secs(10), || {
        let line = stderr.try_recv().ok();
        async move { line.filter(|l| l.contains("reconnect") || l.contains("resumed") || l.contains("from offset")) }
    })
    .await
    .expect("told the user");
    assert!(!said.is_empty());
    let all: Vec<u64> = before.iter().chain(after.iter()).copied().collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "no duplicate and no reordering across the restart: {all:?}");

    // An execution of a fleet workflow created by someone else: the fleet claims and drives it.
    let created = one(&env, &["exec", "create", "--workflow", "deploy-prod"]).await;
    let id = created["execution_id"].as_str().expect("an id").to_owned();
    let finished = eventually("the fleet to drive it to a terminal state", Duration::from_secs(60), || {
        let env = env.clone();
        let id = id.clone();
        async move {
            let execution = one(&env, &["exec", "get", &id]).await;
            ["completed", "failed", "cancelled"].contains(&execution["status"].as_str()?).then_some(execution)
        }
    })
    .await
    .expect("picked up");
    assert!(finished["labels"]["source"].is_null(), "not one of the fleet's own: {finished}");
    // The history comes from the read model, behind the stream that `exec get` reads.
    eventually("the fleet's steps in the history", Duration::from_secs(20), || {
        let (env, id) = (env.clone(), id.clone());
        async move {
            let steps = json_lines(&env, &["events", "--execution", &id, "--type", "step.started"]).await;
            (!steps.is_empty()).then_some(())
        }
    })
    .await
    .expect("the fleet ran its steps");
    // Still following, on one connection, well past the lifetime of the token it connected with.
    while restarted.elapsed() < Duration::from_secs(14) {
        next_offsets(&mut stdout, 1).await;
    }
    let _ = simulate.start_kill();
}

#[tokio::test]
async fn bad_flags_and_unreachable_services_give_one_line_and_a_non_zero_exit() {
    let unreachable = vec![
        ("RUNCAST_API_URL".to_owned(), "http://127.0.0.1:1".to_owned()),
        ("RUNCAST_GATEWAY_URL".to_owned(), "ws://127.0.0.1:1".to_owned()),
        ("RUNCAST_JWT_SECRET".to_owned(), SECRET.to_owned()),
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["exec", "create"], "--workflow"),
        (&["simulate", "--rate", "fast"], "--rate"),
        (&["simulate", "--rate", "0"], "--rate"),
        (&["exec", "status", "e1", "sideways"], "unknown execution status"),
        (&["events", "--type", "nope"], "unknown event type"),
        (&["no-such-command"], "no-such-command"),
        (&["exec", "get", "e1"], "cannot reach execution-api"),
        (&["agents"], "cannot reach execution-api"),
        (&["watch"], "cannot reach ws-gateway"),
        (&["exec", "create", "--workflow", "w", "--input", "[1]"], "--input"),
    ];
    for (args, expected) in cases {
        let output = run(&unreachable, args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "runcast {args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "runcast {args:?}: {stderr}");
        assert!(stderr.contains(expected), "runcast {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    let no_secret = run(&[("RUNCAST_API_URL".to_owned(), "http://127.0.0.1:1".to_owned())], &["token"]).await;
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("RUNCAST_JWT_SECRET"));
    assert!(!no_secret.status.success());
}

#[tokio::test]
async fn a_stopped_simulated_fleet_has_its_executions_failed_by_the_grace() {
    let mut stack = Stack::start_with_api(&[("RUNCAST_AGENT_LOST_GRACE", "1s")]).await;
    let env = stack.cli_env().await;
    let simulated = run(&env, &["simulate", "--agents", "2", "--rate", "10", "--duration", "2s", "--no-pick-up"]).await;
    assert!(simulated.status.success(), "{}", String::from_utf8_lossy(&simulated.stderr));

    // What the fleet left running, each owned by one of its agents.
    let orphans = eventually("executions the stopped fleet left running", Duration::from_secs(20), || {
        let env = env.clone();
        async move {
            let active = json_lines(&env, &["exec", "list", "--status", "running,paused,blocked"]).await;
            (!active.is_empty()).then_some(active)
        }
    })
    .await
    .expect("a fleet stopped mid-run leaves running executions");
    // The list comes from the read model, which may lag; `exec get` reads the stream.
    let mut orphans_now = Vec::new();
    for listed in &orphans {
        let current = one(&env, &["exec", "get", listed["execution_id"].as_str().expect("id")]).await;
        if matches!(current["status"].as_str(), Some("running" | "paused" | "blocked")) {
            orphans_now.push(current);
        }
    }
    let orphans = orphans_now;
    assert!(!orphans.is_empty(), "the fleet stopped with executions in flight");
    for execution in &orphans {
        assert!(execution["agent_id"].as_str().is_some_and(|id| id.starts_with("sim-")), "owned: {execution}");
    }

    // Its agents go offline after their heartbeat timeout; after the grace, each execution fails.
    let mut lost_agent_failures = 0;
    for execution in &orphans {
        let id = execution["execution_id"].as_str().expect("id").to_owned();
        let owner = execution["agent_id"].as_str().expect("owner").to_owned();
        let failed = eventually(&format!("{id} to fail"), Duration::from_secs(60), || {
            let (env, id) = (env.clone(), id.clone());
            async move {
                let execution = one(&env, &["exec", "get", &id]).await;
                (execution["status"] == "failed").then_some(execution)
            }
        })
        .await
        .expect("failed by the grace");
        let lost = format!("agent {owner} went offline");
        if execution["status"] == "blocked" {
            // Its approval's deadline (3 s in simulate) may pass before the agent's grace does.
            let error = failed["error"].as_str().unwrap_or_default();
            assert!(error == lost || error.ends_with("expired"), "{id}: {error}");
        } else {
            assert_eq!(failed["error"], lost, "{id}");
            lost_agent_failures += 1;
        }
    }
    assert!(lost_agent_failures > 0, "at least one running execution was failed for its lost agent");
}

/// The next line of a spawned command within 30 s.
async fn next_line(lines: &mut mpsc::Receiver<String>, what: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no line in time"))
        .unwrap_or_else(|| panic!("{what}: the command ended"))
}

/// Runs, expects success, returns stdout as text.
async fn text(env: &[(String, String)], args: &[&str]) -> String {
    let output = run(env, args).await;
    assert!(output.status.success(), "runcast {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn exit_codes_are_the_documented_ones() {
    let unreachable = vec![
        ("RUNCAST_API_URL".to_owned(), "http://127.0.0.1:1".to_owned()),
        ("RUNCAST_GATEWAY_URL".to_owned(), "ws://127.0.0.1:1".to_owned()),
        ("RUNCAST_JWT_SECRET".to_owned(), SECRET.to_owned()),
    ];
    // 2: the command line is wrong, whether clap or the command itself finds it (before any call).
    let usage: &[&[&str]] = &[
        &["exec", "list", "--status", "sideways"],
        &["watch", "--status", "sideways"],
        &["watch", "agents", "--status", "sideways"],
        &["agents", "--status", "sideways"],
        &["events", "--type", "nope"],
        &["events", "--since", "yesterday"],
        &["exec", "status", "e1", "sideways"],
        &["exec", "create", "--workflow", "w", "--input", "[1]"],
        &["exec", "create"],
        &["no-such-command"],
        &["simulate", "--rate", "0"],
    ];
    for args in usage {
        let output = run(&unreachable, args).await;
        assert_eq!(output.status.code(), Some(2), "runcast {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // 1: understood, but it failed.
    for args in [&["exec", "get", "e1"][..], &["watch"], &["logs", "tail", "e1"]] {
        let output = run(&unreachable, args).await;
        assert_eq!(output.status.code(), Some(1), "runcast {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // 0: help, for every subcommand.
    for args in [&["--help"][..], &["exec", "get", "--help"], &["watch", "--help"], &["logs", "tail", "--help"]] {
        let output = run(&unreachable, args).await;
        assert_eq!(output.status.code(), Some(0), "runcast {args:?}");
    }
}

#[tokio::test]
async fn people_get_text_watch_starts_from_the_current_state_and_logs_tail_ends_with_the_execution() {
    let mut stack = Stack::start().await;
    let env = stack.cli_env().await;

    // An execution with a finished step, progress, a pending approval and two log lines.
    let first = one(&env, &["exec", "create", "--workflow", "deploy", "--label", "team=infra"]).await;
    let id = first["execution_id"].as_str().expect("id").to_owned();
    one(&env, &["exec", "status", &id, "running", "--agent", "agent-7"]).await;
    one(&env, &["exec", "step", &id, "build", "running", "--name", "Build"]).await;
    one(&env, &["exec", "step", &id, "build", "completed"]).await;
    one(&env, &["exec", "progress", &id, "40", "--step", "test"]).await;
    one(&env, &["logs", "append", &id, "first line", "second line"]).await;
    one(&env, &["exec", "request-approval", &id, "release", "--reason", "prod", "--expires-in", "1h"]).await;

    // exec get: the whole execution in text; --json unchanged.
    let shown = text(&env, &["exec", "get", &id]).await;
    for expected in [
        &format!("execution  {id}") as &str,
        "workflow   deploy",
        "status     blocked  40%  step test",
        "agent      agent-7",
        "labels     team=infra",
        "created    ",
        "started    ",
        "duration   ",
        "steps (1)",
        "  build (Build)  completed",
        "approvals (1)",
        "  release  pending  deadline ",
        "(in 59m",
        "reason: prod",
    ] {
        assert!(shown.contains(expected), "exec get lacks {expected:?}:\n{shown}");
    }
    assert_eq!(one(&env, &["exec", "get", &id]).await["steps"][0]["status"], "completed");

    // The list behind watch's current state comes from the read model: wait until it is there.
    eventually("the blocked execution in the list", Duration::from_secs(20), || {
        let env = env.clone();
        async move { (!json_lines(&env, &["exec", "list", "--status", "blocked"]).await.is_empty()).then_some(()) }
    })
    .await
    .expect("listed");

    // watch, piped, started after the execution exists: its current state comes first, as text;
    // then what happens next, each once.
    let (_plain, mut plain, _) = spawn_lines(&env, &["watch", "executions"]);
    let (_json, mut json, _) = spawn_lines(&env, &["--json", "watch", "executions"]);
    let line = next_line(&mut plain, "watch's first line").await;
    assert!(line.contains(" EXECUTIONS ") && line.contains(" state ") && line.contains(&id), "{line}");
    assert!(line.contains("blocked 40% (deploy) step test"), "{line}");
    let frame: Value = serde_json::from_str(&next_line(&mut json, "watch --json's first line").await).expect("JSON");
    assert_eq!((frame["type"].as_str(), frame["data"]["execution_id"].as_str()), (Some("snapshot"), Some(id.as_str())));
    let state_offset = frame["offset"].as_u64().expect("offset");

    one(&env, &["exec", "approve", &id, "release"]).await;
    let line = next_line(&mut plain, "the approval").await;
    assert!(
        line.contains("approval.granted") && line.contains(&id) && line.contains("approval release granted"),
        "{line}"
    );
    let frame: Value = serde_json::from_str(&next_line(&mut json, "the approval").await).expect("JSON");
    assert_eq!(frame["type"], "approval.granted");
    assert!(frame["offset"].as_u64().expect("offset") > state_offset, "no event the state already held: {frame}");

    // logs tail: the history first, as plain lines, then new ones, and it ends with the execution.
    let (mut tail, mut tail_lines, _) = spawn_lines(&env, &["logs", "tail", &id]);
    assert_eq!(next_line(&mut tail_lines, "history").await, "first line");
    assert_eq!(next_line(&mut tail_lines, "history").await, "second line");
    one(&env, &["logs", "append", &id, "third line"]).await;
    assert_eq!(next_line(&mut tail_lines, "a new line").await, "third line");
    // Lines appended just before the end are shown before it exits.
    one(&env, &["logs", "append", &id, "last words"]).await;
    one(&env, &["exec", "status", &id, "completed"]).await;
    assert_eq!(next_line(&mut tail_lines, "the last line").await, "last words");
    let status = tokio::time::timeout(Duration::from_secs(30), tail.wait())
        .await
        .expect("logs tail exits once the execution has ended")
        .expect("waits");
    assert!(status.success(), "{status:?}");
    assert!(tail_lines.recv().await.is_none(), "nothing after the end");

    // On an execution that has ended: the whole log, then exit; --json keeps the event frames.
    assert_eq!(text(&env, &["logs", "tail", &id]).await, "first line\nsecond line\nthird line\nlast words\n");
    let frames = json_lines(&env, &["logs", "tail", &id]).await;
    assert_eq!(frames.len(), 3, "one frame per append: {frames:?}");
    assert_eq!(frames[0]["data"]["payload"]["logs_appended"]["lines"][1]["text"], "second line");

    // watch logs:<id>, piped: the text of each line, from the first.
    let (_watch_logs, mut watched, _) = spawn_lines(&env, &["watch", &format!("logs:{id}")]);
    for expected in ["first line", "second line", "third line", "last words"] {
        assert_eq!(next_line(&mut watched, "watch logs").await, expected);
    }

    // events: the stream beside each offset and what each event changed.
    let history = eventually("the history up to the end", Duration::from_secs(20), || {
        let (env, id) = (env.clone(), id.clone());
        async move {
            let history = text(&env, &["events", "--execution", &id, "--limit", "100"]).await;
            history.contains("execution.completed").then_some(history)
        }
    })
    .await
    .expect("history");
    for expected in [
        "created (deploy) team=infra",
        "pending → running",
        "step build (Build) running",
        "step build completed",
        "progress 40% in step test",
        "approval release pending (deadline ",
        "approval release granted",
        "running → completed",
    ] {
        assert!(
            history.lines().any(|line| line.contains(" EXECUTIONS ") && line.contains(expected)),
            "no EXECUTIONS line with {expected:?}:\n{history}"
        );
    }
    assert!(
        history.lines().any(|line| line.contains(" LOGS ") && line.contains("2 lines #1-2: first line")),
        "log events are named as LOGS:\n{history}"
    );

    // watch agents starts from the agents as listed, in their own terms.
    let simulated = run(&env, &["simulate", "--agents", "1", "--rate", "1", "--duration", "1s", "--no-pick-up"]).await;
    assert!(simulated.status.success(), "{}", String::from_utf8_lossy(&simulated.stderr));
    eventually("the simulated agent in the list", Duration::from_secs(20), || {
        let env = env.clone();
        async move { (json_lines(&env, &["agents"]).await.len() == 1).then_some(()) }
    })
    .await
    .expect("listed");
    let (_agents, mut agents, _) = spawn_lines(&env, &["watch", "agents"]);
    let line = next_line(&mut agents, "watch agents' first line").await;
    assert!(line.contains(" AGENTS ") && line.contains(" state ") && line.contains(" sim-"), "{line}");
    assert!(line.contains(" cpu ") && line.contains(" running "), "{line}");

    // Without the api (or its read model) watch says so and follows the live feed.
    let mut no_api = env.clone();
    no_api.retain(|(name, _)| name != "RUNCAST_API_URL");
    no_api.push(("RUNCAST_API_URL".into(), "http://127.0.0.1:1".into()));
    let (_live, mut live, mut live_stderr) = spawn_lines(&no_api, &["watch", "executions"]);
    let said = next_line(&mut live_stderr, "watch without the api").await;
    assert!(said.contains("cannot load the current state") && said.contains("live events only"), "{said}");
    // Live from when its subscription is in place: create until one shows up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no live event without the api");
        let created = one(&env, &["exec", "create", "--workflow", "live-only"]).await;
        let id = created["execution_id"].as_str().expect("id").to_owned();
        let shown = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(line) = live.recv().await {
                if line.contains(&id) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        if let Ok(Some(line)) = shown {
            assert!(line.contains("execution.created") && line.contains("created (live-only)"), "{line}");
            break;
        }
    }
}

/// The screens a terminal `watch` drew: what follows each cursor-home, without colours, as lines.
fn screens(output: &str) -> Vec<Vec<String>> {
    let plain = {
        let mut text = String::new();
        let mut chars = output.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' && chars.peek() == Some(&'[') {
                let mut sequence = String::new();
                for c in chars.by_ref() {
                    sequence.push(c);
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
                if sequence.ends_with('H') {
                    text.push('\u{1}'); // a new screen starts here
                }
            } else if c != '\r' {
                text.push(c);
            }
        }
        text
    };
    plain
        .split('\u{1}')
        .filter(|screen| !screen.trim().is_empty())
        .map(|screen| screen.lines().map(str::to_owned).filter(|line| !line.is_empty()).collect())
        .collect()
}

#[tokio::test]
async fn watch_on_a_terminal_fits_it_and_starts_from_the_current_state() {
    let mut stack = Stack::start().await;
    let env = stack.cli_env().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            one(&env, &["exec", "create", "--workflow", "deploy"]).await["execution_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    eventually("the 20 executions in the list", Duration::from_secs(20), || {
        let env = env.clone();
        async move { (json_lines(&env, &["exec", "list"]).await.len() == 20).then_some(()) }
    })
    .await
    .expect("listed");

    // A pseudo-terminal of 90×15, through util-linux `script`; watch exits after one event.
    let watch = format!("stty cols 90 rows 15 && exec {} watch executions --count 1", env!("CARGO_BIN_EXE_runcast"));
    let mut command = Command::new("script");
    command
        .args(["-qfec", &watch, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut watching = command.spawn().expect("script runs");
    let mut stdout = watching.stdout.take().expect("stdout");
    let (sender, mut chunks) = mpsc::channel::<Vec<u8>>(1000);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(read @ 1..) = stdout.read(&mut buffer).await {
            if sender.send(buffer[..read].to_vec()).await.is_err() {
                break;
            }
        }
    });
    // The first screen (the current state) is drawn before the subscription; anything created
    // after it is after the state's offset, so it is the event that ends `--count 1`.
    let mut output = Vec::new();
    while !String::from_utf8_lossy(&output).contains("STATUS") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), chunks.recv())
            .await
            .expect("a first screen in time")
            .unwrap_or_else(|| panic!("watch ended: {}", String::from_utf8_lossy(&output)));
        output.extend(chunk);
    }
    let created = one(&env, &["exec", "create", "--workflow", "deploy-late"]).await["execution_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let status = tokio::time::timeout(Duration::from_secs(60), watching.wait())
        .await
        .expect("watch --count 1 ends")
        .expect("waits");
    assert!(status.success(), "{status:?}: {}", String::from_utf8_lossy(&output));
    while let Some(chunk) = chunks.recv().await {
        output.extend(chunk);
    }
    let output = String::from_utf8_lossy(&output).into_owned();
    let screens = screens(&output);
    assert!(!screens.is_empty(), "no screen drawn: {output:?}");
    for screen in &screens {
        assert!(screen.len() <= 14, "one line spare on a 15-line terminal: {screen:#?}");
        assert!(screen[0].starts_with("ID ") && screen[0].contains("STATUS"), "the header stays on top: {screen:#?}");
        for line in screen {
            assert!(line.chars().count() <= 90, "{} columns: {line:?}", line.chars().count());
        }
    }
    // The first screen already shows executions created before watch started.
    let first = &screens[0];
    assert!(
        ids.iter().any(|id| first.iter().any(|line| line.contains(&id[id.len() - 12..]))),
        "the current state first: {first:#?}"
    );
    let last = screens.last().expect("a screen");
    assert!(last.last().is_some_and(|footer| footer.contains("more below")), "the rest counted: {last:#?}");
    assert!(last[1].contains(&created[created.len() - 12..]), "the new execution on top, newest first: {last:#?}");
}

#[tokio::test]
async fn a_persons_decision_on_a_simulated_approval_drives_the_run_to_its_end() {
    let mut stack = Stack::start().await;
    let env = stack.cli_env().await;
    // Every run asks for an approval that waits 60 s, and the fleet decides none itself.
    let args = [
        "simulate",
        "--agents",
        "1",
        "--rate",
        "1",
        "--duration",
        "40s",
        "--no-pick-up",
        "--approval-percent",
        "100",
        "--approval-wait",
        "60s",
        "--self-decide-percent",
        "0",
    ];
    let mut simulate = runcast(&env, &args).spawn().expect("simulate");
    let waiting = eventually("a run waiting for its approval", Duration::from_secs(30), || {
        let env = env.clone();
        async move { json_lines(&env, &["exec", "list", "--status", "blocked"]).await.into_iter().next() }
    })
    .await
    .expect("blocked");
    let id = waiting["execution_id"].as_str().expect("id").to_owned();
    let approved = run(&env, &["exec", "approve", &id, "release", "--comment", "a person said yes"]).await;
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let done = eventually(&format!("{id} to run to its end"), Duration::from_secs(30), || {
        let (env, id) = (env.clone(), id.clone());
        async move {
            let execution = one(&env, &["exec", "get", &id]).await;
            (execution["status"] == "completed").then_some(execution)
        }
    })
    .await
    .expect("the granted run completes");
    assert_eq!(done["approvals"][0]["status"], "granted");
    assert_eq!(done["approvals"][0]["comment"], "a person said yes");
    let _ = simulate.start_kill();
}

#[tokio::test]
async fn with_retries_writes_wait_out_an_api_restart_and_are_applied_once() {
    let mut stack = Stack::start().await;
    let env = stack.cli_env().await;
    let created = one(&env, &["exec", "create", "--workflow", "cli-retries"]).await;
    let id = created["execution_id"].as_str().expect("an id").to_owned();

    // The api goes away (kill -9: no drain).
    let grpc = stack.api.addr("grpc_addr").await.expect("grpc").to_string();
    stack.api.signal(Signal::SIGKILL).expect("kill the api");
    stack.api.wait_exit(Duration::from_secs(15)).await.expect("the api exits");

    // Without --retries: one line and exit 1, at once.
    let output = run(&env, &["exec", "status", &id, "running"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach execution-api"));

    // With --retries: each says it will try again, and does once the api is back.
    let (mut status, mut status_out, mut status_err) =
        spawn_lines(&env, &["--json", "exec", "status", &id, "running", "--retries", "6"]);
    let (mut create, mut create_out, mut create_err) =
        spawn_lines(&env, &["--json", "exec", "create", "--workflow", "cli-retries-new", "--retries", "6"]);
    for stderr in [&mut status_err, &mut create_err] {
        let said = next_line(stderr, "a retry announced").await;
        assert!(said.contains("cannot reach execution-api") && said.contains("trying again in 1 s (1 of 6)"), "{said}");
    }
    stack.api =
        stack.infra.services(&stack.isolation, SECRET).spawn("execution-api", &[("RUNCAST_GRPC_ADDR", &grpc)]).await;
    let mut printed = Vec::new();
    for (child, stdout, what) in [(&mut status, &mut status_out, "status"), (&mut create, &mut create_out, "create")] {
        let exit =
            tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("done in time").expect("waits");
        assert!(exit.success(), "{what} succeeded once the api was back");
        let execution: Value = serde_json::from_str(&next_line(stdout, what).await).expect("JSON");
        printed.push(execution["execution_id"].as_str().expect("an execution").to_owned());
    }

    // Each change once: the status once (version 2: created, running), one execution created.
    let current = one(&env, &["exec", "get", &id]).await;
    assert_eq!((current["status"].as_str(), current["version"].as_u64()), (Some("running"), Some(2)), "{current}");
    // The list is the read model's: once the persister has the create that was answered, it has
    // any other the retries made before it.
    let new_id = printed[1].clone();
    eventually("the create in the history", Duration::from_secs(30), || {
        let (env, new_id) = (env.clone(), new_id.clone());
        async move { (!json_lines(&env, &["events", "--execution", &new_id]).await.is_empty()).then_some(()) }
    })
    .await
    .expect("persisted");
    let created = json_lines(&env, &["exec", "list", "--workflow", "cli-retries-new"]).await;
    assert_eq!(created.len(), 1, "{created:?}");
}
