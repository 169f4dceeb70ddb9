//! Text for people, JSON for scripts (`--json`: one object per line, the contract's JSON form).

use runcast_contract::WireEnum;
use runcast_contract::v1::{Agent, AgentStatus, Event, EventType, Execution, ExecutionStatus};
use serde::Serialize;

pub fn json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(err) => eprintln!("runcast: cannot print as JSON: {err}"),
    }
}

fn wire<E: WireEnum>(raw: i32) -> &'static str {
    E::try_from(raw).map_or("unspecified", |value| value.wire_name())
}

pub fn execution_line(execution: &Execution) -> String {
    format!(
        "{}  {:<10} {:>3}%  v{}  workflow={}{}",
        execution.execution_id,
        wire::<ExecutionStatus>(execution.status),
        execution.progress,
        execution.version,
        execution.workflow_id,
        if execution.current_step.is_empty() { String::new() } else { format!("  step={}", execution.current_step) },
    )
}

pub fn execution(execution: &Execution, as_json: bool) {
    if as_json { json(execution) } else { println!("{}", execution_line(execution)) }
}

pub fn agent(agent: &Agent, as_json: bool) {
    if as_json {
        json(agent)
    } else {
        println!(
            "{}  {:<8} cpu={:>5.1}% mem={:>5.1}% gpu={:>5.1}%  running={}",
            agent.agent_id,
            wire::<AgentStatus>(agent.status),
            agent.cpu_percent,
            agent.memory_percent,
            agent.gpu_percent,
            agent.running_execution_ids.len()
        )
    }
}

pub fn event(event: &Event, as_json: bool) {
    if as_json {
        json(event)
    } else {
        let entity = if event.execution_id.is_empty() { &event.agent_id } else { &event.execution_id };
        println!(
            "{:>8}  {}  {:<20} {}  v{}",
            event.offset,
            occurred(event),
            wire::<EventType>(event.r#type),
            entity,
            event.version
        );
    }
}

fn occurred(event: &Event) -> String {
    event.occurred_at.as_ref().and_then(|ts| runcast_contract::json::to_rfc3339(ts).ok()).unwrap_or_default()
}
