//! Cloud Map resources in moto, made through the SDK: an HTTP namespace, a
//! service, instances.

#![allow(dead_code)]

use std::collections::HashMap;

use aws_sdk_servicediscovery::Client;

/// An HTTP namespace and a service in it.
pub struct CloudMapFixture {
    /// A plain client (no prefix interceptor needed for these operations).
    pub client: Client,
    /// The namespace name.
    pub namespace: String,
    /// The service name.
    pub service: String,
    /// The service id (`srv-…`).
    pub service_id: String,
}

/// Creates HTTP namespace `name`; its id.
pub async fn create_namespace(client: &Client, name: &str) -> String {
    client
        .create_http_namespace()
        .name(name)
        .send()
        .await
        .expect("CreateHttpNamespace");
    client
        .list_namespaces()
        .send()
        .await
        .expect("ListNamespaces")
        .namespaces()
        .iter()
        .find(|n| n.name() == Some(name))
        .and_then(|n| n.id().map(str::to_owned))
        .expect("namespace id")
}

impl CloudMapFixture {
    /// Creates namespace `namespace` and service `service` in it.
    pub async fn create(client: Client, namespace: &str, service: &str) -> CloudMapFixture {
        let namespace_id = create_namespace(&client, namespace).await;
        let created = client
            .create_service()
            .name(service)
            .namespace_id(namespace_id)
            .send()
            .await
            .expect("CreateService");
        let service_id = created
            .service()
            .and_then(|s| s.id())
            .expect("service id")
            .to_owned();
        CloudMapFixture {
            client,
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            service_id,
        }
    }

    /// Registers instance `id` with `attributes`.
    pub async fn register(&self, id: &str, attributes: &[(&str, &str)]) {
        let attributes: HashMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.client
            .register_instance()
            .service_id(&self.service_id)
            .instance_id(id)
            .set_attributes(Some(attributes))
            .send()
            .await
            .expect("RegisterInstance");
    }

    /// Deregisters instance `id`.
    pub async fn deregister(&self, id: &str) {
        self.client
            .deregister_instance()
            .service_id(&self.service_id)
            .instance_id(id)
            .send()
            .await
            .expect("DeregisterInstance");
    }

    /// Sets the custom health status (`healthy`) of instance `id`.
    pub async fn set_healthy(&self, id: &str, healthy: bool) {
        use aws_sdk_servicediscovery::types::CustomHealthStatus;
        let status = if healthy {
            CustomHealthStatus::Healthy
        } else {
            CustomHealthStatus::Unhealthy
        };
        self.client
            .update_instance_custom_health_status()
            .service_id(&self.service_id)
            .instance_id(id)
            .status(status)
            .send()
            .await
            .expect("UpdateInstanceCustomHealthStatus");
    }
}
