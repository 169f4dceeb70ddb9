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
        let infra = Infra::start().await.expect("servers");
        let isolation = infra.isolate().await.expect("isolation");
        let nats = infra.nats.url();
        let env = [
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", isolation.database_url.as_str()),
            ("RUNCAST_STREAM_PREFIX", isolation.stream_prefix.as_str()),
            ("RUNCAST_JWT_SECRET", SECRET),
        ];
        let (api, persister, gateway) = tokio::join!(
            ServiceProcess::spawn("execution-api", &env),
            ServiceProcess::spawn("event-persister", &env),
            ServiceProcess::spawn("ws-gateway", &env),
        );
        let (mut api, persister, gateway) =
            (api.expect("api"), persister.expect("persister"), gateway.expect("gateway"));
        api.addr("grpc_addr").await.expect("grpc");
        let stack = Self { infra, isolation, api, _persister: persister, gateway };
        for service in [&stack.api, &stack._persister, &stack.gateway] {
            wait_ready(service).await;
        }
        stack
    }

    async fn gateway_env(&self, http_addr: &str) -> ServiceProcess {
        let nats = self.infra.nats.url();
        let env = [
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", self.isolation.database_url.as_str()),
            ("RUNCAST_STREAM_PREFIX", self.isolation.stream_prefix.as_str()),
            ("RUNCAST_JWT_SECRET", SECRET),
            ("RUNCAST_HTTP_ADDR", http_addr),
        ];
        let gateway = ServiceProcess::spawn("ws-gateway", &env).await.expect("gateway");
        wait_ready(&gateway).await;
        gateway
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

async fn wait_ready(service: &ServiceProcess) {
    let url = service.http_url("/readyz");
    eventually(&format!("{url} ready"), Duration::from_secs(30), || {
        let url = url.clone();
        async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", service.recent_log()));
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
    let logged = one(&env, &["logs", "append", &id, "first line", "second line"]).await;
    assert_eq!(logged["last_line_number"], 2);
    let mut piped = runcast(&env, &["logs", "append", &id, "--stderr"]);
    piped.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = piped.spawn().expect("spawn");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"from stdin 1\nfrom stdin 2\n").await.expect("write");
    }
    let output = child.wait_with_output().await.expect("waits");
    assert!(String::from_utf8_lossy(&output.stdout).contains("last line number 4"), "{output:?}");

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
    let tail = json_lines(&env, &["logs", "tail", &id, "--since-offset", "0", "--count", "2"]).await;
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0]["data"]["payload"]["logs_appended"]["lines"][0]["text"], "first line");
    assert_eq!(tail[1]["data"]["payload"]["logs_appended"]["lines"][1]["stream"], "stderr");
}

/// A `runcast watch` process whose stdout lines arrive on a channel.
fn watch(env: &[(String, String)]) -> (tokio::process::Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut command = runcast(env, &["watch", "executions"]);
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
