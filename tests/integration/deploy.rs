//! deploy/ and the Dockerfile agree with the gateway and with each other:
//! the config they carry is valid, ports and timeouts line up (deregistration
//! delay < drain < stopTimeout, ALB idle timeout < keep-alive), the health
//! check runs the binary, IAM grants no wildcard but where AWS has no
//! resource-level permission. (CI also runs cfn-lint on the template and a
//! JSON-schema check of the task definition: see .ci/run.)

use std::path::Path;

use canary_gateway::config::Config;
use canary_gateway::config::env::{OVERRIDES, parse_overridden};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn json(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap()
}

/// A config text with the environment's overrides (`env`: name -> value) applied.
fn config_with_env(text: &str, env: &[(String, String)]) -> Config {
    let overrides: Vec<_> = OVERRIDES
        .iter()
        .filter_map(|o| {
            env.iter()
                .find(|(k, _)| k == o.var)
                .map(|(_, v)| (o, v.clone()))
        })
        .collect();
    parse_overridden(text, "deploy", &overrides).unwrap()
}

#[test]
fn the_task_definition_carries_a_valid_config_that_fits_it() {
    let td = json("deploy/ecs-task-definition.json");
    let c = &td["containerDefinitions"][0];
    let env: Vec<(String, String)> = c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    let text = &env
        .iter()
        .find(|(k, _)| k == "CANARY_GATEWAY_CONFIG")
        .unwrap()
        .1;
    let config = config_with_env(text, &env);
    let ports: Vec<u64> = c["portMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert!(ports.contains(&u64::from(config.listener.address.port())));
    assert!(ports.contains(&u64::from(config.admin.address.port())));
    assert!(c["stopTimeout"].as_u64().unwrap() > config.timeouts.shutdown_grace.as_secs());
    assert_eq!(
        c["healthCheck"]["command"],
        serde_json::json!(["CMD", "/usr/local/bin/canary-gateway", "health"])
    );
    assert_eq!(
        c["logConfiguration"]["options"]["awslogs-create-group"],
        "true"
    );
    assert_eq!(
        c["secrets"][0]["name"],
        config.admin.token_env.clone().unwrap()
    );
    // The file it was made from is the same config.
    let file = config_with_env(&read("deploy/gateway.ecs.toml"), &env);
    assert_eq!(file.versions, config.versions);
}

#[test]
fn the_cloudformation_template_lines_up_timeouts_ports_and_security_groups() {
    let t = json("deploy/cloudformation/gateway.json");
    let r = &t["Resources"];
    let c = &r["TaskDefinition"]["Properties"]["ContainerDefinitions"][0];
    // The embedded config, with sample parameter values.
    let text = c["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == "CANARY_GATEWAY_CONFIG")
        .unwrap()["Value"]["Fn::Sub"]
        .as_str()
        .unwrap()
        .replace("${NamespaceName}", "example.local")
        .replace("${V1ServiceName}", "svc1-v1")
        .replace("${V2ServiceName}", "svc1-v2")
        .replace("${StoreKey}", "svc1");
    let config = config_with_env(
        &text,
        &[("CANARY_STORE_TABLE".into(), "canary-gateway-weights".into())],
    );
    let attr = |resource: &str, list: &str, key: &str| -> u64 {
        r[resource]["Properties"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["Key"] == key)
            .unwrap()["Value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let deregistration = attr(
        "TargetGroup",
        "TargetGroupAttributes",
        "deregistration_delay.timeout_seconds",
    );
    assert!(deregistration < config.timeouts.shutdown_grace.as_secs());
    assert!(config.timeouts.shutdown_grace.as_secs() < c["StopTimeout"].as_u64().unwrap());
    let alb_idle = attr(
        "LoadBalancer",
        "LoadBalancerAttributes",
        "idle_timeout.timeout_seconds",
    );
    assert!(alb_idle < config.timeouts.idle.as_secs());
    let tg = &r["TargetGroup"]["Properties"];
    assert_eq!(tg["HealthCheckPath"], "/readyz");
    assert_eq!(
        tg["HealthCheckPort"],
        config.admin.address.port().to_string()
    );
    assert_eq!(tg["Port"], config.listener.address.port());
    // Only the ALB reaches the gateway's two ports.
    let ingress = r["GatewaySecurityGroup"]["Properties"]["SecurityGroupIngress"]
        .as_array()
        .unwrap();
    let mut ports: Vec<u64> = ingress
        .iter()
        .map(|i| i["FromPort"].as_u64().unwrap())
        .collect();
    ports.sort();
    assert_eq!(ports, [9080, 9901]);
    for i in ingress {
        assert_eq!(i["SourceSecurityGroupId"]["Ref"], "AlbSecurityGroup", "{i}");
        assert!(i.get("CidrIp").is_none());
    }
    assert_eq!(c["HealthCheck"]["Command"][2], "health");
}

/// Every statement of every policy: `Resource: "*"` only for the actions
/// AWS offers no resource-level permission for.
#[test]
fn iam_policies_are_least_privilege() {
    const NO_RESOURCE_LEVEL: [&str; 3] = [
        "servicediscovery:DiscoverInstances",
        "servicediscovery:DiscoverInstancesRevision",
        "ecr:GetAuthorizationToken",
    ];
    let t = json("deploy/cloudformation/gateway.json");
    let mut docs = vec![
        json("deploy/task-role-policy.json"),
        json("deploy/execution-role-policy.json"),
    ];
    for (_, res) in t["Resources"].as_object().unwrap() {
        if let Some(policies) = res["Properties"]["Policies"].as_array() {
            docs.extend(policies.iter().map(|p| p["PolicyDocument"].clone()));
        }
        if res["Type"] == "AWS::IAM::RolePolicy" {
            docs.push(res["Properties"]["PolicyDocument"].clone());
        }
    }
    assert!(docs.len() >= 5);
    for doc in docs {
        for s in doc["Statement"].as_array().unwrap() {
            let actions: Vec<&str> = match &s["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
                other => panic!("{other}"),
            };
            for a in &actions {
                assert!(!a.contains('*'), "wildcard action {a}");
            }
            if s["Resource"] == "*" {
                for a in &actions {
                    assert!(NO_RESOURCE_LEVEL.contains(a), "{a} on Resource *");
                }
            }
            if actions
                .iter()
                .any(|a| a.starts_with("servicediscovery:Discover"))
            {
                let namespace = &s["Condition"]["StringEquals"]["servicediscovery:NamespaceName"];
                assert!(
                    !namespace.is_null(),
                    "discovery not limited to a namespace: {s}"
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_locked_runs_non_root_and_probes_itself() {
    let d = read("Dockerfile");
    assert!(d.contains("cargo build --release --locked"));
    assert!(d.contains("USER 65532:65532"));
    assert!(d.contains("EXPOSE 9080 9901"));
    assert!(d.contains("CMD [\"/usr/local/bin/canary-gateway\", \"health\"]"));
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/canary-gateway\"]"));
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/"));
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/Dockerfile")
            .exists()
    );
}
