//! The catalog and its AsyncAPI 3.0 document: every event type and subscription of this test
//! binary is listed, with schemas, and the document has AsyncAPI's structure. No broker
//! needed: `cargo test -p tchu --test catalog`. Assertions name this file's items, never the
//! registry's size.
//!
//! The document is checked structurally here (required keys, `$ref`s that resolve);
//! `.ci/contracts.sh` also runs the official parser (`@asyncapi/parser`, tests/asyncapi/) on it,
//! which must report no error and no warning: `TCHU_ASYNCAPI_OUT=doc.json` writes it.

use serde_json::Value;

/// A nested type: it needs a schema of its own.
#[derive(serde::Serialize, serde::Deserialize, tchu::JsonSchema)]
#[schemars(crate = "tchu::schemars")]
#[derive(Debug)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// An order was placed.
#[tchu::event(topic = "catalog_test.order.placed")]
#[derive(Debug)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
    /// Who placed it.
    #[validate(email)]
    pub email: String,
    /// What is in it.
    pub lines: Vec<Line>,
}

/// A request whose reply type has a schema.
#[tchu::event(topic = "catalog_test.order.get", response = OrderReply)]
#[derive(Debug)]
pub struct GetOrder {
    /// The order.
    pub order_id: u64,
}

/// The reply to [`GetOrder`].
#[derive(serde::Serialize, serde::Deserialize, tchu::JsonSchema)]
#[schemars(crate = "tchu::schemars")]
#[derive(Debug)]
pub struct OrderReply {
    /// Its lines.
    pub lines: Vec<Line>,
}

/// A request with a generic reply type.
#[tchu::event(topic = "catalog_test.order.list", response = Vec<OrderReply>)]
#[derive(Debug)]
pub struct ListOrders {}

/// A request whose reply type has no schema: only its name is recorded.
#[tchu::event(topic = "catalog_test.order.count", response = CountReply)]
#[derive(Debug)]
pub struct CountOrders {}

/// No `JsonSchema` here.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct CountReply {
    /// The count.
    pub count: u64,
}

/// An event without a schema (say, a field type has none).
#[tchu::event(topic = "catalog_test.legacy", schema = false)]
#[derive(Debug)]
pub struct Legacy {
    /// Anything.
    pub blob: serde_json::Value,
}

#[tchu::subscribe(OrderPlaced)]
async fn ship(_order: OrderPlaced) {}

#[tchu::subscribe(GetOrder)]
async fn get_order(_req: GetOrder) -> OrderReply {
    OrderReply { lines: Vec::new() }
}

#[tchu::subscribe("catalog_test.order.*", id = "catalog_test_audit")]
async fn audit(_event: serde_json::Value) {}

fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("not a local $ref: {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} does not resolve"))
}

/// Every `$ref` in the document points at something in it.
fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                resolve(doc, r);
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[test]
fn catalog_lists_events_and_subscriptions() {
    let c = tchu::catalog();
    let placed = c.event("OrderPlaced").expect("OrderPlaced listed");
    assert_eq!(placed.topic, "catalog_test.order.placed");
    assert_eq!(placed.type_name, "catalog::OrderPlaced");
    assert!(!placed.is_request());
    assert_eq!(
        placed.schema,
        serde_json::json!({ "$ref": "#/components/schemas/OrderPlaced" })
    );
    let schema = &c.schemas["OrderPlaced"];
    assert_eq!(schema["properties"]["email"]["format"], "email");
    assert_eq!(schema["description"], "An order was placed.");
    assert_eq!(
        schema["properties"]["lines"]["items"]["$ref"],
        "#/components/schemas/Line"
    );
    assert!(c.schemas.contains_key("Line"));

    let get = c.event("catalog::GetOrder").expect("GetOrder listed");
    assert_eq!(get.response_type_name.as_deref(), Some("OrderReply"));
    assert_eq!(
        get.response_schema,
        Some(serde_json::json!({ "$ref": "#/components/schemas/OrderReply" }))
    );
    let list = c.event("ListOrders").expect("ListOrders listed");
    assert_eq!(list.response_type_name.as_deref(), Some("Vec<OrderReply>"));
    assert_eq!(
        list.response_schema.as_ref().map(|s| &s["items"]["$ref"]),
        Some(&serde_json::json!("#/components/schemas/OrderReply"))
    );
    let count = c.event("CountOrders").expect("CountOrders listed");
    assert_eq!(count.response_type_name.as_deref(), Some("CountReply"));
    assert_eq!(count.response_schema, None);
    let legacy = c.event("Legacy").expect("Legacy listed");
    assert_eq!(legacy.schema, serde_json::json!({ "type": "object" }));

    assert_eq!(
        c.subscription("ship").map(|s| s.pattern.as_str()),
        Some("catalog_test.order.placed")
    );
    assert!(c.subscription("catalog::get_order").is_some());
    assert_eq!(
        c.subscription("catalog_test_audit")
            .map(|s| s.pattern.as_str()),
        Some("catalog_test.order.*")
    );
    let mut sorted = c.subscriptions.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(sorted, c.subscriptions);
}

#[test]
fn asyncapi_document() {
    let mut info = tchu::ServiceInfo::new("orders");
    info.version = Some("1.2.3".into());
    info.publishes = Some(
        [
            std::any::type_name::<OrderPlaced>(),
            std::any::type_name::<Legacy>(),
            std::any::type_name::<ListOrders>(),
            std::any::type_name::<CountOrders>(),
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let file = tchu::catalog().file(&info);
    let doc = tchu::asyncapi::document(&file, &tchu::asyncapi::Deployment::default());
    let text = serde_json::to_string_pretty(&doc).unwrap();
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    // To validate it with other tools: `TCHU_ASYNCAPI_OUT=/tmp/doc.json cargo test ...`.
    if let Some(path) = std::env::var_os("TCHU_ASYNCAPI_OUT") {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "orders");
    assert!(doc["info"]["version"].is_string());
    for key in ["channels", "operations", "components"] {
        assert!(doc[key].is_object(), "`{key}` is an object");
    }

    // Every operation has an action and references a channel with `$ref`, and its messages
    // are messages of that channel.
    let ops = doc["operations"].as_object().unwrap();
    for (name, op) in ops {
        let action = op["action"].as_str().unwrap();
        assert!(action == "send" || action == "receive", "{name}: {action}");
        let channel_ref = op["channel"]["$ref"].as_str().unwrap();
        assert!(channel_ref.starts_with("#/channels/"), "{name}");
        resolve(&doc, channel_ref);
        for m in op["messages"].as_array().unwrap() {
            let r = m["$ref"].as_str().unwrap();
            assert!(
                r.starts_with(&format!("{channel_ref}/messages/")),
                "{name}: {r}"
            );
        }
    }
    // Channels have an address (or `null` for reply channels) and messages by `$ref`.
    for (name, ch) in doc["channels"].as_object().unwrap() {
        assert!(
            ch["address"].is_string() || ch["address"].is_null(),
            "{name}"
        );
        for m in ch["messages"].as_object().unwrap().values() {
            assert!(
                m["$ref"]
                    .as_str()
                    .unwrap()
                    .starts_with("#/components/messages/")
            );
        }
    }
    // AsyncAPI's key rule for components.
    for section in ["schemas", "messages"] {
        for key in doc["components"][section].as_object().unwrap().keys() {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                "{section} key {key}"
            );
        }
    }
    check_refs(&doc, &doc);

    // Each event of this file is a `send`, each subscription a `receive`, on its channel.
    let op_on = |action: &str, address: &str| {
        ops.values().any(|op| {
            op["action"] == action
                && resolve(&doc, op["channel"]["$ref"].as_str().unwrap())["address"] == address
        })
    };
    for e in ["OrderPlaced", "GetOrder", "CountOrders", "Legacy"] {
        let m = &doc["components"]["messages"][e];
        assert_eq!(m["name"], e);
        assert_eq!(m["contentType"], "application/json");
    }
    // Declared as published; requests without a handler here are called.
    assert!(op_on("send", "catalog_test.order.placed"));
    assert!(op_on("send", "catalog_test.order.count"));
    assert!(op_on("send", "catalog_test.legacy"));
    // Subscriptions and served requests receive from the service's queue, bound with their
    // patterns (an `x-` extension: AsyncAPI has no binding patterns).
    assert!(op_on("receive", "orders"));
    let queue = &doc["channels"]["queue.orders"];
    assert_eq!(queue["bindings"]["amqp"]["is"], "queue");
    assert_eq!(queue["bindings"]["amqp"]["queue"]["durable"], true);
    assert_eq!(
        queue["x-tchu-binding-patterns"],
        serde_json::json!([
            "catalog_test.order.*",
            "catalog_test.order.get",
            "catalog_test.order.placed"
        ])
    );
    assert_eq!(queue["x-tchu-dead-letter-queue"], "orders.dlq");
    assert_eq!(
        queue["x-tchu-retry-queues"]["pattern"],
        "orders.retry.<delay>ms"
    );
    let placed = &doc["channels"]["catalog_test.order.placed"];
    assert_eq!(placed["bindings"]["amqp"]["is"], "routingKey");
    assert_eq!(placed["bindings"]["amqp"]["exchange"]["type"], "topic");
    assert_eq!(doc["servers"]["rabbitmq"]["protocol"], "amqp");
    assert_eq!(doc["info"]["version"], "1.2.3");
    assert_eq!(
        doc["components"]["messages"]["OrderPlaced"]["payload"]["$ref"],
        "#/components/schemas/OrderPlaced"
    );

    // The wildcard subscription receives the four order events.
    let audit = &ops["receive.catalog_test_audit"];
    assert_eq!(audit["messages"].as_array().unwrap().len(), 4);
    // The RPC handler declares its reply.
    let get = &ops["serve.catalog__get_order"];
    let reply = resolve(&doc, get["reply"]["channel"]["$ref"].as_str().unwrap());
    assert!(reply["address"].is_null());
    assert_eq!(
        doc["components"]["messages"]["GetOrder.reply"]["payload"]["$ref"],
        "#/components/schemas/OrderReply"
    );
}

#[test]
fn catalog_file_of_this_binary() {
    let file = tchu::catalog().file(&tchu::ServiceInfo::new("orders"));
    assert_eq!(file.tchu_catalog, tchu::CATALOG_FORMAT);
    // OrderPlaced has a typed handler here, so by default it is received, not published.
    let published: Vec<&str> = file.publishes.iter().map(|p| p.topic.as_str()).collect();
    assert!(published.contains(&"catalog_test.legacy"), "{published:?}");
    assert!(!published.contains(&"catalog_test.order.placed"));
    let ship = file
        .subscribes
        .iter()
        .find(|s| s.id == "catalog::ship")
        .expect("ship");
    assert_eq!(ship.event.as_deref(), Some("catalog::OrderPlaced"));
    assert_eq!(
        ship.schema,
        Some(serde_json::json!({ "$ref": "#/components/schemas/OrderPlaced" }))
    );
    let audit = file
        .subscribes
        .iter()
        .find(|s| s.id == "catalog_test_audit")
        .expect("audit");
    assert_eq!(
        (audit.event.as_deref(), audit.schema.as_ref()),
        (None, None)
    );
    let served = file
        .serves
        .iter()
        .find(|s| s.topic == "catalog_test.order.get")
        .expect("served");
    assert_eq!(served.handler, "catalog::get_order");
    assert_eq!(served.reply.as_deref(), Some("OrderReply"));
    let called: Vec<&str> = file.calls.iter().map(|c| c.topic.as_str()).collect();
    assert!(called.contains(&"catalog_test.order.count"), "{called:?}");
    assert!(called.contains(&"catalog_test.order.list"));
    assert!(!called.contains(&"catalog_test.order.get"));
    // Fingerprints: the file's and the wire's are the same.
    let legacy = file
        .publishes
        .iter()
        .find(|p| p.topic == "catalog_test.legacy")
        .expect("legacy");
    assert_eq!(
        legacy.fingerprint.as_deref(),
        tchu::fingerprint::of::<Legacy>()
    );
}
