//! Rewriting the weighted targets of an App Mesh route spec.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_appmesh::types::{RouteSpec, WeightedTarget};

use super::AppMeshError;

/// Sets the weights of `spec`'s weighted targets from `percent_by_node`
/// (virtual node name -> 0..=100) and returns whether anything changed.
///
/// Every route kind is handled (http, http2, grpc, tcp). A target whose
/// virtual node is in the map gets its weight; when a node has several targets
/// (different ports) the first gets the weight and the others 0. A node of the
/// map with a non-zero weight and no target gets a new target, with the port of
/// the route's first target. Targets of other virtual nodes are left alone.
pub fn apply_weights(
    spec: &mut RouteSpec,
    percent_by_node: &BTreeMap<String, u32>,
) -> Result<bool, AppMeshError> {
    let mut actions: Vec<&mut Vec<WeightedTarget>> = Vec::new();
    if let Some(action) = spec.http_route.as_mut().and_then(|r| r.action.as_mut()) {
        actions.push(&mut action.weighted_targets);
    }
    if let Some(action) = spec.http2_route.as_mut().and_then(|r| r.action.as_mut()) {
        actions.push(&mut action.weighted_targets);
    }
    if let Some(action) = spec.grpc_route.as_mut().and_then(|r| r.action.as_mut()) {
        actions.push(&mut action.weighted_targets);
    }
    if let Some(action) = spec.tcp_route.as_mut().and_then(|r| r.action.as_mut()) {
        actions.push(&mut action.weighted_targets);
    }
    if actions.is_empty() {
        return Err(AppMeshError::NoWeightedTargets);
    }
    let mut changed = false;
    for targets in actions {
        changed |= rewrite(targets, percent_by_node)?;
    }
    Ok(changed)
}

/// Rewrites one action's targets; see [`apply_weights`].
fn rewrite(
    targets: &mut Vec<WeightedTarget>,
    percent_by_node: &BTreeMap<String, u32>,
) -> Result<bool, AppMeshError> {
    let mut changed = false;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let port = targets.first().and_then(|t| t.port);
    for target in targets.iter_mut() {
        let Some(&percent) = percent_by_node.get(&target.virtual_node) else {
            continue;
        };
        let weight = if seen.insert(target.virtual_node.clone()) {
            to_weight(percent)
        } else {
            0
        };
        if target.weight != weight {
            target.weight = weight;
            changed = true;
        }
    }
    for (node, &percent) in percent_by_node {
        if percent == 0 || seen.contains(node) {
            continue;
        }
        let target = WeightedTarget::builder()
            .virtual_node(node)
            .weight(to_weight(percent))
            .set_port(port)
            .build()
            .map_err(|e| AppMeshError::Invalid(format!("weighted target {node}: {e}")))?;
        targets.push(target);
        changed = true;
    }
    Ok(changed)
}

/// A percentage as App Mesh's weight type.
fn to_weight(percent: u32) -> i32 {
    i32::try_from(percent.min(100)).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use aws_sdk_appmesh::types::{HttpRoute, HttpRouteAction, TcpRoute, TcpRouteAction};

    use super::*;

    fn target(node: &str, weight: i32, port: Option<i32>) -> WeightedTarget {
        WeightedTarget::builder()
            .virtual_node(node)
            .weight(weight)
            .set_port(port)
            .build()
            .unwrap()
    }

    fn http_spec(targets: Vec<WeightedTarget>) -> RouteSpec {
        RouteSpec::builder()
            .http_route(
                HttpRoute::builder()
                    .action(
                        HttpRouteAction::builder()
                            .set_weighted_targets(Some(targets))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build()
    }

    fn weights_of(spec: &RouteSpec) -> Vec<(String, i32, Option<i32>)> {
        spec.http_route
            .as_ref()
            .and_then(|r| r.action.as_ref())
            .map(|a| {
                a.weighted_targets
                    .iter()
                    .map(|t| (t.virtual_node.clone(), t.weight, t.port))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn percents(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn updates_mapped_targets_and_leaves_others() {
        let mut spec = http_spec(vec![
            target("node-v1", 100, Some(8080)),
            target("node-v2", 0, Some(8080)),
            target("other", 5, Some(8080)),
        ]);
        let changed =
            apply_weights(&mut spec, &percents(&[("node-v1", 99), ("node-v2", 1)])).unwrap();
        assert!(changed);
        assert_eq!(
            weights_of(&spec),
            vec![
                ("node-v1".into(), 99, Some(8080)),
                ("node-v2".into(), 1, Some(8080)),
                ("other".into(), 5, Some(8080)),
            ]
        );
        // Same weights again: nothing changes.
        let again =
            apply_weights(&mut spec, &percents(&[("node-v1", 99), ("node-v2", 1)])).unwrap();
        assert!(!again);
    }

    #[test]
    fn adds_missing_targets_with_the_route_port() {
        let mut spec = http_spec(vec![target("node-v1", 100, Some(9090))]);
        apply_weights(
            &mut spec,
            &percents(&[("node-v1", 90), ("node-v2", 10), ("node-v3", 0)]),
        )
        .unwrap();
        assert_eq!(
            weights_of(&spec),
            vec![
                ("node-v1".into(), 90, Some(9090)),
                ("node-v2".into(), 10, Some(9090))
            ]
        );
    }

    #[test]
    fn duplicate_node_targets_get_the_weight_once() {
        let mut spec = http_spec(vec![
            target("node-v1", 50, Some(1)),
            target("node-v1", 50, Some(2)),
        ]);
        apply_weights(&mut spec, &percents(&[("node-v1", 100)])).unwrap();
        assert_eq!(
            weights_of(&spec),
            vec![
                ("node-v1".into(), 100, Some(1)),
                ("node-v1".into(), 0, Some(2))
            ]
        );
    }

    #[test]
    fn tcp_routes_are_handled() {
        let mut spec = RouteSpec::builder()
            .tcp_route(
                TcpRoute::builder()
                    .action(
                        TcpRouteAction::builder()
                            .set_weighted_targets(Some(vec![target("a", 1, None)]))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build();
        assert!(apply_weights(&mut spec, &percents(&[("a", 60), ("b", 40)])).unwrap());
        let tcp = spec.tcp_route.unwrap().action.unwrap().weighted_targets;
        assert_eq!(tcp.len(), 2);
        assert_eq!((tcp[0].weight, tcp[1].weight), (60, 40));
    }

    #[test]
    fn a_spec_without_actions_is_an_error() {
        let mut spec = RouteSpec::builder().build();
        assert!(matches!(
            apply_weights(&mut spec, &percents(&[("a", 100)])),
            Err(AppMeshError::NoWeightedTargets)
        ));
    }
}
