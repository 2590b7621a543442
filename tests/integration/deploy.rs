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

/// A CloudFormation `Fn::Sub` text with every `${Name}` replaced from `values`
/// (name -> value); a name without a value fails the test.
fn fn_sub(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').unwrap();
        let name = &after[..end];
        let value = values
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("no value for ${{{name}}}"))
            .1;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
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
    // The embedded config: an Fn::Sub of the text and one variable, the
    // [appmesh] table when AppMeshName is given (Fn::If SyncAppMesh), else nothing.
    let sub = &c["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == "CANARY_GATEWAY_CONFIG")
        .unwrap()["Value"]["Fn::Sub"];
    let text = sub[0].as_str().unwrap();
    let section = &sub[1]["AppMeshSection"]["Fn::If"];
    assert_eq!(section[0], "SyncAppMesh");
    assert_eq!(section[2], "");
    let section = section[1]["Fn::Sub"].as_str().unwrap();
    let p = &t["Parameters"];
    assert_eq!(p["V1Weight"]["Default"], "100");
    assert_eq!(p["V2Weight"]["Default"], "0");
    let names = [
        ("NamespaceName", "the-wednesday-super-app.local"),
        ("V1ServiceName", "svc1-v1"),
        ("V2ServiceName", "svc1-v2"),
        ("StoreKey", "svc1"),
    ];
    let env = [(
        "CANARY_STORE_TABLE".to_string(),
        "canary-gateway-weights".to_string(),
    )];
    // Sync off (the defaults): no [appmesh]; the versions of deploy/gateway.ecs.toml.
    let mut values: Vec<(&str, &str)> = names.to_vec();
    values.extend([
        ("V1Weight", "100"),
        ("V2Weight", "0"),
        ("AppMeshSection", ""),
    ]);
    let config = config_with_env(&fn_sub(text, &values), &env);
    assert!(config.appmesh.is_none());
    let file = config_with_env(&read("deploy/gateway.ecs.toml"), &env);
    assert_eq!(file.versions, config.versions);
    // Sync on, at the route's weights: the [appmesh] keys docs/configuration.md names.
    let appmesh = fn_sub(
        section,
        &[
            ("AppMeshName", "the-wednesday-super-app"),
            ("AppMeshVirtualRouterName", "svc1-router"),
            ("AppMeshRouteName", "svc1-route"),
            ("V1VirtualNodeName", "svc1-virtual-node-1"),
            ("V2VirtualNodeName", "svc1-virtual-node-2"),
        ],
    );
    let mut values: Vec<(&str, &str)> = names.to_vec();
    values.extend([
        ("V1Weight", "90"),
        ("V2Weight", "10"),
        ("AppMeshSection", appmesh.as_str()),
    ]);
    let config = config_with_env(&fn_sub(text, &values), &env);
    assert_eq!(config.versions[0].name, "v1");
    assert_eq!(config.versions[0].weight, 90);
    assert_eq!(config.versions[1].name, "v2");
    assert_eq!(config.versions[1].weight, 10);
    let am = config
        .appmesh
        .as_ref()
        .expect("sync on: an [appmesh] table");
    assert_eq!(am.mesh, "the-wednesday-super-app");
    assert_eq!(am.virtual_router, "svc1-router");
    assert_eq!(am.route, "svc1-route");
    assert_eq!(am.virtual_nodes["v1"], "svc1-virtual-node-1");
    assert_eq!(am.virtual_nodes["v2"], "svc1-virtual-node-2");
    // Its policy: UpdateRoute on the route and on the two virtual nodes of its
    // weighted targets (IAM authorizes the request against those nodes too).
    let statements = r["AppMeshRoutePolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap();
    let update = statements
        .iter()
        .find(|s| s["Action"] == "appmesh:UpdateRoute")
        .unwrap();
    let resources: Vec<&str> = update["Resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Fn::Sub"].as_str().unwrap())
        .collect();
    for node in ["${V1VirtualNodeName}", "${V2VirtualNodeName}"] {
        let arn = format!(":mesh/${{AppMeshName}}/virtualNode/{node}");
        assert!(resources.iter().any(|x| x.ends_with(&arn)), "{resources:?}");
    }
    assert!(
        resources
            .iter()
            .any(|x| x.ends_with("/route/${AppMeshRouteName}")),
        "{resources:?}"
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
