//! Rewriting the weighted targets of an App Mesh route spec.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_appmesh::types::{RouteSpec, WeightedTarget};

use super::AppMeshError;
use super::scale::scale_to;

/// App Mesh's limit on the weighted targets of one route action.
pub const MAX_TARGETS: usize = 10;
/// What the weights of one route action add up to at most.
pub const MAX_TOTAL: u32 = 100;

/// Sets the weights of `spec`'s weighted targets from `weights` (mapped
/// version -> gateway weight) and `nodes` (version -> virtual node). Returns
/// whether anything changed and the percent written per version (of the first
/// action).
///
/// Every route kind is handled (http, http2, grpc, tcp). Targets of virtual
/// nodes that no version maps to (foreign targets) keep their weight; the
/// versions' weights are scaled into what remains of 100, so the action's
/// total stays at most 100 and each target 0 to 100 (UpdateRoute's limits),
/// and every version with a non-zero weight gets at least 1 (a remainder
/// smaller than the number of such versions is refused).
/// When a node has several targets (different ports) the first gets the weight
/// and the others 0. A node with a non-zero weight and no target gets a new
/// target, with the port of the action's first target; an action may hold at
/// most [`MAX_TARGETS`]. When the limits cannot be met the spec is refused
/// with [`AppMeshError::Invalid`] naming the reason.
pub fn apply_weights(
    spec: &mut RouteSpec,
    weights: &BTreeMap<String, u32>,
    nodes: &BTreeMap<String, String>,
) -> Result<(bool, BTreeMap<String, u32>), AppMeshError> {
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
    let mut written: Option<BTreeMap<String, u32>> = None;
    for targets in actions {
        let (action_changed, by_version) = rewrite(targets, weights, nodes)?;
        changed |= action_changed;
        written.get_or_insert(by_version);
    }
    Ok((changed, written.unwrap_or_default()))
}

/// Rewrites one action's targets; see [`apply_weights`].
fn rewrite(
    targets: &mut Vec<WeightedTarget>,
    weights: &BTreeMap<String, u32>,
    nodes: &BTreeMap<String, String>,
) -> Result<(bool, BTreeMap<String, u32>), AppMeshError> {
    let managed: BTreeSet<&String> = nodes.values().collect();
    let foreign: i64 = targets
        .iter()
        .filter(|t| !managed.contains(&t.virtual_node))
        .map(|t| i64::from(t.weight.max(0)))
        .sum();
    if foreign > i64::from(MAX_TOTAL) {
        return Err(AppMeshError::Invalid(format!(
            "the targets of virtual nodes not in virtual_nodes already weigh {foreign} (more than {MAX_TOTAL}); fix the route"
        )));
    }
    let remainder = MAX_TOTAL - foreign as u32;
    // Every version with a non-zero weight gets at least 1 (the gateway sends
    // it traffic): the remainder must hold one point for each.
    let non_zero: Vec<&str> = weights
        .iter()
        .filter(|&(_, &w)| w > 0)
        .map(|(version, _)| version.as_str())
        .collect();
    if (remainder as usize) < non_zero.len() {
        return Err(AppMeshError::Invalid(format!(
            "the targets of virtual nodes not in virtual_nodes weigh {foreign} of {MAX_TOTAL}; the {remainder} left cannot give each of the {} versions with a non-zero weight ({}) at least 1; lower the other targets' weights",
            non_zero.len(),
            non_zero.join(", ")
        )));
    }
    let by_version = scale_to(weights, remainder);
    let mut percent_by_node: BTreeMap<String, u32> = BTreeMap::new();
    for (version, node) in nodes {
        *percent_by_node.entry(node.clone()).or_default() +=
            by_version.get(version).copied().unwrap_or(0);
    }

    let mut next = targets.clone();
    let mut changed = false;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let port = next.first().and_then(|t| t.port);
    for target in next.iter_mut() {
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
    for (node, &percent) in &percent_by_node {
        if percent == 0 || seen.contains(node) {
            continue;
        }
        let target = WeightedTarget::builder()
            .virtual_node(node)
            .weight(to_weight(percent))
            .set_port(port)
            .build()
            .map_err(|e| AppMeshError::Invalid(format!("weighted target {node}: {e}")))?;
        next.push(target);
        changed = true;
    }
    if next.len() > MAX_TARGETS {
        return Err(AppMeshError::Invalid(format!(
            "the route action would have {} weighted targets; App Mesh allows at most {MAX_TARGETS}",
            next.len()
        )));
    }
    let total: i64 = next.iter().map(|t| i64::from(t.weight)).sum();
    if total > i64::from(MAX_TOTAL) {
        return Err(AppMeshError::Invalid(format!(
            "the route's weights would add up to {total}, more than {MAX_TOTAL}"
        )));
    }
    *targets = next;
    Ok((changed, by_version))
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

    /// Version vN maps to node node-vN.
    fn nodes(versions: &[&str]) -> BTreeMap<String, String> {
        versions
            .iter()
            .map(|v| (v.to_string(), format!("node-{v}")))
            .collect()
    }

    fn total(spec: &RouteSpec) -> i32 {
        weights_of(spec).iter().map(|(_, w, _)| w).sum()
    }

    #[test]
    fn foreign_targets_keep_their_weight_and_the_versions_share_the_rest() {
        let mut spec = http_spec(vec![
            target("node-v1", 100, Some(8080)),
            target("node-v2", 0, Some(8080)),
            target("other", 20, Some(8080)),
        ]);
        let (changed, written) = apply_weights(
            &mut spec,
            &percents(&[("v1", 99), ("v2", 1)]),
            &nodes(&["v1", "v2"]),
        )
        .unwrap();
        assert!(changed);
        assert_eq!(written, percents(&[("v1", 79), ("v2", 1)]));
        assert_eq!(
            weights_of(&spec),
            vec![
                ("node-v1".into(), 79, Some(8080)),
                ("node-v2".into(), 1, Some(8080)),
                ("other".into(), 20, Some(8080)),
            ]
        );
        assert_eq!(total(&spec), 100);
        // Same weights again: nothing changes.
        let (again, _) = apply_weights(
            &mut spec,
            &percents(&[("v1", 99), ("v2", 1)]),
            &nodes(&["v1", "v2"]),
        )
        .unwrap();
        assert!(!again);
    }

    #[test]
    fn impossible_routes_are_refused_and_left_alone() {
        let over = vec![target("node-v1", 50, None), target("other", 101, None)];
        let mut spec = http_spec(over.clone());
        let err = apply_weights(&mut spec, &percents(&[("v1", 1)]), &nodes(&["v1"])).unwrap_err();
        assert!(err.to_string().contains("more than 100"), "{err}");
        assert_eq!(weights_of(&spec), weights_of(&http_spec(over)));

        let mut spec = http_spec(vec![target("other", 100, None)]);
        let err = apply_weights(&mut spec, &percents(&[("v1", 1)]), &nodes(&["v1"])).unwrap_err();
        assert!(err.to_string().contains("weigh 100 of 100"), "{err}");

        // Nine foreign targets plus two new ones: eleven, one more than allowed.
        let nine: Vec<WeightedTarget> = (0..9).map(|i| target(&format!("f{i}"), 1, None)).collect();
        let mut spec = http_spec(nine.clone());
        let err = apply_weights(
            &mut spec,
            &percents(&[("v1", 50), ("v2", 50)]),
            &nodes(&["v1", "v2"]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most 10"), "{err}");
        assert_eq!(weights_of(&spec).len(), 9);
    }

    /// Foreign targets leave 1 point and two versions have a non-zero weight:
    /// one of them would get 0 on the route while the gateway sends it
    /// traffic. Refused, naming the foreign total and the versions; the
    /// route is left alone.
    #[test]
    fn a_remainder_too_small_for_every_non_zero_version_is_refused() {
        let route = vec![
            target("node-v1", 1, None),
            target("node-v2", 0, None),
            target("other", 99, None),
        ];
        let mut spec = http_spec(route.clone());
        let err = apply_weights(
            &mut spec,
            &percents(&[("v1", 99), ("v2", 1)]),
            &nodes(&["v1", "v2"]),
        )
        .unwrap_err();
        assert!(matches!(err, AppMeshError::Invalid(_)), "{err:?}");
        let message = err.to_string();
        for part in ["weigh 99 of 100", "the 1 left", "2 versions", "(v1, v2)"] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
        assert_eq!(weights_of(&spec), weights_of(&http_spec(route)));

        // One point each is enough: the canary keeps 1.
        let mut spec = http_spec(vec![target("node-v1", 2, None), target("other", 98, None)]);
        let (_, written) = apply_weights(
            &mut spec,
            &percents(&[("v1", 99), ("v2", 1)]),
            &nodes(&["v1", "v2"]),
        )
        .unwrap();
        assert_eq!(written, percents(&[("v1", 1), ("v2", 1)]));
        assert_eq!(total(&spec), 100);
        // A version at 0 needs no point.
        let mut spec = http_spec(vec![target("node-v1", 1, None), target("other", 99, None)]);
        let (_, written) = apply_weights(
            &mut spec,
            &percents(&[("v1", 99), ("v2", 0)]),
            &nodes(&["v1", "v2"]),
        )
        .unwrap();
        assert_eq!(written, percents(&[("v1", 1), ("v2", 0)]));
    }

    #[test]
    fn adds_missing_targets_with_the_route_port() {
        let mut spec = http_spec(vec![target("node-v1", 100, Some(9090))]);
        apply_weights(
            &mut spec,
            &percents(&[("v1", 90), ("v2", 10), ("v3", 0)]),
            &nodes(&["v1", "v2", "v3"]),
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
        apply_weights(&mut spec, &percents(&[("v1", 100)]), &nodes(&["v1"])).unwrap();
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
                            .set_weighted_targets(Some(vec![target("node-a", 1, None)]))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build();
        let (changed, _) = apply_weights(
            &mut spec,
            &percents(&[("a", 60), ("b", 40)]),
            &nodes(&["a", "b"]),
        )
        .unwrap();
        assert!(changed);
        let tcp = spec.tcp_route.unwrap().action.unwrap().weighted_targets;
        assert_eq!(tcp.len(), 2);
        assert_eq!((tcp[0].weight, tcp[1].weight), (60, 40));
    }

    #[test]
    fn a_spec_without_actions_is_an_error() {
        let mut spec = RouteSpec::builder().build();
        assert!(matches!(
            apply_weights(&mut spec, &percents(&[("a", 100)]), &nodes(&["a"])),
            Err(AppMeshError::NoWeightedTargets)
        ));
    }
}
