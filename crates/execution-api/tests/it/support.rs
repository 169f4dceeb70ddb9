//! A running stack for one test: servers, isolation, api replicas, clients with tokens.

use runcast_contract::client::Bearer;
use runcast_contract::v1::agent_service_client::AgentServiceClient;
use runcast_contract::v1::execution_service_client::ExecutionServiceClient;
use runcast_testkit::{Infra, Isolation, ServiceEnv, ServiceProcess};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub(crate) const SECRET: &str = "integration-test-secret";
pub(crate) const TENANT: &str = "acme";

pub(crate) fn token_for(tenant: &str, roles: &[&str], ttl_seconds: i64) -> String {
    runcast_testkit::token::token(SECRET, &format!("{tenant}-user"), tenant, roles, ttl_seconds)
}

pub(crate) fn admin() -> String {
    token_for(TENANT, &["admin"], 3600)
}

pub(crate) type Executions = ExecutionServiceClient<InterceptedService<Channel, Bearer>>;
pub(crate) type Agents = AgentServiceClient<InterceptedService<Channel, Bearer>>;

pub(crate) struct Stack {
    pub infra: Infra,
    pub isolation: Isolation,
}

impl Stack {
    pub(crate) async fn start() -> Self {
        let infra = Infra::start().await.expect("servers");
        let isolation = infra.isolate().await.expect("isolation");
        Self { infra, isolation }
    }

    /// Where this stack's services find NATS, PostgreSQL, their prefix and the secret.
    pub(crate) fn services(&self) -> ServiceEnv {
        self.infra.services(&self.isolation, SECRET)
    }

    /// An execution-api process, ready (streams provisioned).
    pub(crate) async fn api(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut api = self.services().spawn("execution-api", extra).await;
        api.addr("grpc_addr").await.expect("grpc listener");
        api
    }

    /// An event-persister process, ready (schema migrated).
    pub(crate) async fn persister(&self) -> ServiceProcess {
        self.persister_with(&[]).await
    }

    /// An event-persister process with extra settings, ready (schema migrated).
    pub(crate) async fn persister_with(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        self.services().spawn("event-persister", extra).await
    }
}

async fn channel(api: &mut ServiceProcess) -> Channel {
    let addr = api.addr("grpc_addr").await.expect("grpc addr");
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("grpc connects")
}

fn bearer(token: Option<&str>) -> Bearer {
    Bearer::new(token).expect("ascii token")
}

pub(crate) async fn executions(api: &mut ServiceProcess, token: Option<&str>) -> Executions {
    ExecutionServiceClient::with_interceptor(channel(api).await, bearer(token))
}

pub(crate) async fn agents(api: &mut ServiceProcess, token: Option<&str>) -> Agents {
    AgentServiceClient::with_interceptor(channel(api).await, bearer(token))
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client")
}

/// Every event stored on an execution's subject, in order, decoded.
pub(crate) async fn events_of(stack: &Stack, execution_id: &str) -> Vec<runcast_contract::v1::Event> {
    events_on(stack, runcast_contract::StreamKind::Executions, execution_id).await
}

/// Every event stored on the subject of one entity of `kind` (tenant [`TENANT`]), in order.
pub(crate) async fn events_on(
    stack: &Stack,
    kind: runcast_contract::StreamKind,
    entity: &str,
) -> Vec<runcast_contract::v1::Event> {
    use prost::Message as _;
    let topology = runcast_contract::Topology::with_prefix(&stack.isolation.stream_prefix).expect("prefix");
    let tenant = runcast_contract::EntityId::parse("tenant_id", TENANT).expect("id");
    let id = runcast_contract::EntityId::parse("id", entity).expect("id");
    let subject = topology.entity_subject(kind, &tenant, &id);
    let js = async_nats::jetstream::new(async_nats::connect(stack.infra.nats.url()).await.expect("nats"));
    let stream = js.get_stream(topology.stream_name(kind)).await.expect("stream");
    let Ok(last) = stream.direct_get_last_for_subject(subject.clone()).await else { return Vec::new() };
    let options = runcast_runtime::nats::feed::FeedOptions::default();
    let mut messages =
        runcast_runtime::nats::feed::OrderedFeed::start(&js, &topology.stream_name(kind), subject, 1, options)
            .await
            .expect("feed");
    let mut events = Vec::new();
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let sequence = message.info().expect("info").stream_sequence;
        let mut event = runcast_contract::v1::Event::decode(message.payload.as_ref()).expect("decodes");
        event.offset = sequence;
        events.push(event);
        if sequence >= last.sequence {
            break;
        }
    }
    events
}

/// Creates an execution of `workflow` and returns its id.
pub(crate) async fn create(client: &mut Executions, workflow: &str) -> String {
    let request = runcast_contract::v1::CreateExecutionRequest { workflow_id: workflow.into(), ..Default::default() };
    client.create_execution(request).await.expect("create").into_inner().execution_id
}
