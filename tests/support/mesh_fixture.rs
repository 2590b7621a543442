//! An App Mesh mesh in moto, made through the SDK: virtual nodes, a virtual
//! router and an HTTP route with weighted targets.

#![allow(dead_code)]

use aws_sdk_appmesh::Client;
use aws_sdk_appmesh::types::{
    HttpRoute, HttpRouteAction, HttpRouteMatch, PortMapping, PortProtocol, RouteSpec,
    VirtualNodeSpec, VirtualRouterListener, VirtualRouterSpec, WeightedTarget,
};

pub const MESH: &str = "shop";
pub const ROUTER: &str = "web-router";
pub const ROUTE: &str = "web-route";

fn target(node: &str, weight: i32) -> WeightedTarget {
    WeightedTarget::builder()
        .virtual_node(node)
        .weight(weight)
        .build()
        .unwrap()
}

/// Creates mesh [`MESH`] with `nodes`, router [`ROUTER`] and route [`ROUTE`]
/// whose weighted targets are `targets` (virtual node, weight).
pub async fn create_mesh(client: &Client, nodes: &[&str], targets: &[(&str, i32)]) {
    client.create_mesh().mesh_name(MESH).send().await.unwrap();
    for node in nodes {
        client
            .create_virtual_node()
            .mesh_name(MESH)
            .virtual_node_name(*node)
            .spec(VirtualNodeSpec::builder().build())
            .send()
            .await
            .unwrap();
    }
    let port = PortMapping::builder()
        .port(8080)
        .protocol(PortProtocol::Http)
        .build()
        .unwrap();
    client
        .create_virtual_router()
        .mesh_name(MESH)
        .virtual_router_name(ROUTER)
        .spec(
            VirtualRouterSpec::builder()
                .listeners(VirtualRouterListener::builder().port_mapping(port).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut action = HttpRouteAction::builder();
    for (node, weight) in targets {
        action = action.weighted_targets(target(node, *weight));
    }
    let spec = RouteSpec::builder()
        .http_route(
            HttpRoute::builder()
                .r#match(HttpRouteMatch::builder().prefix("/").build())
                .action(action.build().unwrap())
                .build(),
        )
        .build();
    client
        .create_route()
        .mesh_name(MESH)
        .virtual_router_name(ROUTER)
        .route_name(ROUTE)
        .spec(spec)
        .send()
        .await
        .unwrap();
}

/// The route's weighted targets as (virtual node, weight), sorted.
pub async fn route_weights(client: &Client) -> Vec<(String, i32)> {
    let out = client
        .describe_route()
        .mesh_name(MESH)
        .virtual_router_name(ROUTER)
        .route_name(ROUTE)
        .send()
        .await
        .unwrap();
    let spec = out.route().unwrap().spec.clone().unwrap();
    let mut weights: Vec<(String, i32)> = spec
        .http_route
        .unwrap()
        .action
        .unwrap()
        .weighted_targets
        .into_iter()
        .map(|t| (t.virtual_node, t.weight))
        .collect();
    weights.sort();
    weights
}
