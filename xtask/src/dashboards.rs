//! `cargo xtask dashboards`: writes the Grafana dashboards under deploy/grafana/ from the
//! panel lists below, so that they stay alike (importable JSON, a `DS_PROMETHEUS`
//! input, the same layout rules). A unit test fails when the committed files differ.
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

/// One panel: title, unit, and (PromQL, legend) queries.
struct Panel {
    title: &'static str,
    unit: &'static str,
    queries: &'static [(&'static str, &'static str)],
}

/// A template variable: name, label, and the `label_values(metric, label)` it lists.
struct Variable {
    name: &'static str,
    metric: &'static str,
    label: &'static str,
}

struct Dashboard {
    file: &'static str,
    uid: &'static str,
    title: &'static str,
    description: &'static str,
    variables: &'static [Variable],
    panels: &'static [Panel],
    /// A node graph of the service-graph edges, full width below the panels.
    service_graph: bool,
}

const SERVICE: Variable = Variable {
    name: "service",
    metric: "http_server_request_duration_seconds_count",
    label: "service_name",
};

const DASHBOARDS: &[Dashboard] = &[
    Dashboard {
        file: "sonde-services.json",
        uid: "sonde-services",
        service_graph: true,
        title: "sonde / Services (HTTP)",
        description: "Rate, errors and duration of every HTTP service sonde observes",
        variables: &[SERVICE],
        panels: &[
            Panel {
                title: "Requests per second",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name) (rate(http_server_request_duration_seconds_count{service_name=~"$service"}[$__rate_interval]))"#,
                    "{{service_name}}",
                )],
            },
            Panel {
                title: "5xx ratio",
                unit: "percentunit",
                queries: &[(
                    r#"sum by (service_name) (rate(http_server_request_duration_seconds_count{service_name=~"$service",http_response_status_code=~"5.."}[$__rate_interval])) / sum by (service_name) (rate(http_server_request_duration_seconds_count{service_name=~"$service"}[$__rate_interval]))"#,
                    "{{service_name}}",
                )],
            },
            Panel {
                title: "Duration p50 / p95 / p99",
                unit: "s",
                queries: &[
                    (
                        r#"histogram_quantile(0.5, sum by (service_name, le) (rate(http_server_request_duration_seconds_bucket{service_name=~"$service"}[$__rate_interval])))"#,
                        "{{service_name}} p50",
                    ),
                    (
                        r#"histogram_quantile(0.95, sum by (service_name, le) (rate(http_server_request_duration_seconds_bucket{service_name=~"$service"}[$__rate_interval])))"#,
                        "{{service_name}} p95",
                    ),
                    (
                        r#"histogram_quantile(0.99, sum by (service_name, le) (rate(http_server_request_duration_seconds_bucket{service_name=~"$service"}[$__rate_interval])))"#,
                        "{{service_name}} p99",
                    ),
                ],
            },
            Panel {
                title: "Requests by method and status",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, http_request_method, http_response_status_code) (rate(http_server_request_duration_seconds_count{service_name=~"$service"}[$__rate_interval]))"#,
                    "{{service_name}} {{http_request_method}} {{http_response_status_code}}",
                )],
            },
            Panel {
                title: "Requests by route (configured routes only)",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, http_route) (rate(http_server_request_duration_seconds_count{service_name=~"$service",http_route!=""}[$__rate_interval]))"#,
                    "{{service_name}} {{http_route}}",
                )],
            },
            Panel {
                title: "Outgoing calls by server",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, server_address, server_port) (rate(http_client_request_duration_seconds_count{service_name=~"$service"}[$__rate_interval]))"#,
                    "{{service_name}} → {{server_address}}:{{server_port}}",
                )],
            },
            Panel {
                title: "Outgoing call errors by type",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, error_type) (rate(http_client_request_duration_seconds_count{service_name=~"$service",error_type!=""}[$__rate_interval]))"#,
                    "{{service_name}} {{error_type}}",
                )],
            },
        ],
    },
    Dashboard {
        file: "sonde-databases.json",
        uid: "sonde-databases",
        service_graph: false,
        title: "sonde / Databases (Redis, PostgreSQL)",
        description: "Redis and PostgreSQL operations as their clients and servers see them",
        variables: &[Variable {
            name: "system",
            metric: "db_client_operation_duration_seconds_count",
            label: "db_system_name",
        }],
        panels: &[
            Panel {
                title: "Operations per second by service",
                unit: "ops",
                queries: &[(
                    r#"sum by (service_name, db_system_name) (rate(db_client_operation_duration_seconds_count{db_system_name=~"$system"}[$__rate_interval]))"#,
                    "{{service_name}} → {{db_system_name}}",
                )],
            },
            Panel {
                title: "Operations per second by operation",
                unit: "ops",
                queries: &[(
                    r#"sum by (db_system_name, db_operation_name) (rate(db_client_operation_duration_seconds_count{db_system_name=~"$system"}[$__rate_interval]))"#,
                    "{{db_system_name}} {{db_operation_name}}",
                )],
            },
            Panel {
                title: "Errors per second by type",
                unit: "ops",
                queries: &[(
                    r#"sum by (service_name, db_system_name, error_type) (rate(db_client_operation_duration_seconds_count{db_system_name=~"$system",error_type!=""}[$__rate_interval]))"#,
                    "{{service_name}} {{db_system_name}} {{error_type}}",
                )],
            },
            Panel {
                title: "Duration p95 by operation",
                unit: "s",
                queries: &[(
                    r#"histogram_quantile(0.95, sum by (db_system_name, db_operation_name, le) (rate(db_client_operation_duration_seconds_bucket{db_system_name=~"$system"}[$__rate_interval])))"#,
                    "{{db_system_name}} {{db_operation_name}}",
                )],
            },
            Panel {
                title: "Server side: operations per second by server",
                unit: "ops",
                queries: &[(
                    r#"sum by (service_name, db_system_name, server_port) (rate(db_server_operation_duration_seconds_count{db_system_name=~"$system"}[$__rate_interval]))"#,
                    "{{service_name}} :{{server_port}}",
                )],
            },
            Panel {
                title: "Server side: duration p95",
                unit: "s",
                queries: &[(
                    r#"histogram_quantile(0.95, sum by (service_name, db_system_name, le) (rate(db_server_operation_duration_seconds_bucket{db_system_name=~"$system"}[$__rate_interval])))"#,
                    "{{service_name}}",
                )],
            },
        ],
    },
    Dashboard {
        file: "sonde-gpus.json",
        uid: "sonde-gpus",
        service_graph: false,
        title: "sonde / GPUs",
        description: "NVIDIA GPUs per device and per service, from NVML",
        variables: &[Variable {
            name: "gpu",
            metric: "hw_gpu_memory_limit_bytes",
            label: "hw_id",
        }],
        panels: &[
            Panel {
                title: "Utilization",
                unit: "percentunit",
                queries: &[(
                    r#"hw_gpu_utilization_ratio{hw_id=~"$gpu",hw_gpu_task="general"}"#,
                    "{{instance}} {{hw_id}}",
                )],
            },
            Panel {
                title: "Memory used (fraction)",
                unit: "percentunit",
                queries: &[(
                    r#"hw_gpu_memory_usage_bytes{hw_id=~"$gpu"} / hw_gpu_memory_limit_bytes{hw_id=~"$gpu"}"#,
                    "{{instance}} {{hw_id}}",
                )],
            },
            Panel {
                title: "Memory by service",
                unit: "bytes",
                queries: &[(
                    r#"sum by (service_name, hw_id) (sonde_gpu_process_memory_usage_bytes{hw_id=~"$gpu"})"#,
                    "{{service_name}} on {{hw_id}}",
                )],
            },
            Panel {
                title: "SM utilization by service",
                unit: "percentunit",
                queries: &[(
                    r#"sum by (service_name, hw_id) (sonde_gpu_process_utilization_ratio{hw_id=~"$gpu"})"#,
                    "{{service_name}} on {{hw_id}}",
                )],
            },
            Panel {
                title: "Temperature",
                unit: "celsius",
                queries: &[(
                    r#"hw_temperature_celsius{hw_type="gpu",hw_id=~"$gpu"}"#,
                    "{{instance}} {{hw_id}}",
                )],
            },
            Panel {
                title: "Power and limit",
                unit: "watt",
                queries: &[
                    (r#"hw_power_watts{hw_id=~"$gpu"}"#, "{{hw_id}}"),
                    (
                        r#"sonde_gpu_power_limit_watts{hw_id=~"$gpu"}"#,
                        "{{hw_id}} limit",
                    ),
                ],
            },
            Panel {
                title: "Clocks held down (throttle reasons)",
                unit: "short",
                queries: &[(
                    r#"sonde_gpu_clock_event_active{hw_id=~"$gpu",sonde_gpu_clock_event_reason!="gpu_idle"} == 1"#,
                    "{{hw_id}} {{sonde_gpu_clock_event_reason}}",
                )],
            },
            Panel {
                title: "XID errors (last hour) and ECC",
                unit: "short",
                queries: &[
                    (
                        r#"increase(sonde_gpu_xid_errors_total{hw_id=~"$gpu"}[1h])"#,
                        "{{hw_id}} XID {{sonde_gpu_xid}}",
                    ),
                    (
                        r#"sonde_gpu_ecc_errors{hw_id=~"$gpu",sonde_gpu_ecc_counter="volatile"}"#,
                        "{{hw_id}} ECC {{sonde_gpu_ecc_type}}",
                    ),
                ],
            },
            Panel {
                title: "PCIe throughput",
                unit: "Bps",
                queries: &[(
                    r#"sonde_gpu_pcie_throughput_bytes_per_second{hw_id=~"$gpu"}"#,
                    "{{hw_id}} {{network_io_direction}}",
                )],
            },
        ],
    },
    Dashboard {
        file: "sonde-health.json",
        uid: "sonde-health",
        service_graph: false,
        title: "sonde / Agent health",
        description: "sonde itself: events, drops, parse errors, export",
        variables: &[],
        panels: &[
            Panel {
                title: "Agents up",
                unit: "short",
                queries: &[(r#"up{job="sonde"}"#, "{{instance}}")],
            },
            Panel {
                title: "Events received per second",
                unit: "short",
                queries: &[(
                    "sum by (instance) (rate(sonde_events_received_total[$__rate_interval]))",
                    "{{instance}}",
                )],
            },
            Panel {
                title: "Events dropped per second by reason",
                unit: "short",
                queries: &[(
                    "sum by (instance, reason) (rate(sonde_events_dropped_total[$__rate_interval]))",
                    "{{instance}} {{reason}}",
                )],
            },
            Panel {
                title: "Parse errors per second",
                unit: "short",
                queries: &[(
                    "sum by (protocol, kind) (rate(sonde_parse_errors_total[$__rate_interval]))",
                    "{{protocol}} {{kind}}",
                )],
            },
            Panel {
                title: "Connections tracked",
                unit: "short",
                queries: &[("sonde_connections_tracked", "{{instance}}")],
            },
            Panel {
                title: "Spans made and exported per second",
                unit: "short",
                queries: &[
                    (
                        "sum by (instance) (rate(sonde_spans_total[$__rate_interval]))",
                        "{{instance}} made",
                    ),
                    (
                        "sum by (instance) (rate(sonde_spans_exported_total[$__rate_interval]))",
                        "{{instance}} exported",
                    ),
                ],
            },
            Panel {
                title: "Export drops per second",
                unit: "short",
                queries: &[(
                    "sum by (signal, reason) (rate(sonde_export_dropped_total[$__rate_interval]))",
                    "{{signal}} {{reason}}",
                )],
            },
            Panel {
                title: "Label sets over the cap",
                unit: "short",
                queries: &[(
                    "sum by (metric) (rate(sonde_metric_label_set_overflow_total[$__rate_interval]))",
                    "{{metric}}",
                )],
            },
            Panel {
                title: "GPU read errors per second",
                unit: "short",
                queries: &[(
                    "sum by (instance) (rate(sonde_gpu_read_errors_total[$__rate_interval]))",
                    "{{instance}}",
                )],
            },
        ],
    },
    Dashboard {
        file: "sonde-llm.json",
        uid: "sonde-llm",
        service_graph: false,
        title: "sonde / LLM calls",
        description: "LLM API calls by calling service and model, the model servers' side, and their GPUs. `service` filters the callers; `model` filters both sides, and the model-server and GPU panels show the services that served those models",
        variables: &[
            Variable {
                name: "service",
                metric: "gen_ai_client_operation_duration_seconds_count",
                label: "service_name",
            },
            Variable {
                name: "model",
                metric: "gen_ai_client_operation_duration_seconds_count",
                label: "gen_ai_request_model",
            },
        ],
        panels: &[
            Panel {
                title: "Calls per second",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_count{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval]))"#,
                    "{{service_name}} → {{gen_ai_request_model}}",
                )],
            },
            Panel {
                title: "Error ratio",
                unit: "percentunit",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_count{service_name=~"$service",gen_ai_request_model=~"$model",error_type!=""}[$__rate_interval])) / sum by (service_name, gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_count{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval]))"#,
                    "{{service_name}} → {{gen_ai_request_model}}",
                )],
            },
            Panel {
                title: "Duration p50 / p95",
                unit: "s",
                queries: &[
                    (
                        r#"histogram_quantile(0.5, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_client_operation_duration_seconds_bucket{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                        "{{service_name}} → {{gen_ai_request_model}} p50",
                    ),
                    (
                        r#"histogram_quantile(0.95, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_client_operation_duration_seconds_bucket{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                        "{{service_name}} → {{gen_ai_request_model}} p95",
                    ),
                ],
            },
            Panel {
                title: "Time to first chunk p95 (streams)",
                unit: "s",
                queries: &[(
                    r#"histogram_quantile(0.95, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_client_operation_time_to_first_chunk_seconds_bucket{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                    "{{service_name}} → {{gen_ai_request_model}}",
                )],
            },
            Panel {
                title: "Tokens per second, input and output (as the responses reported them)",
                unit: "short",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval]))"#,
                    "{{service_name}} → {{gen_ai_request_model}} {{gen_ai_token_type}}",
                )],
            },
            Panel {
                title: "Errors per second by type",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model, error_type) (rate(gen_ai_client_operation_duration_seconds_count{service_name=~"$service",gen_ai_request_model=~"$model",error_type!=""}[$__rate_interval]))"#,
                    "{{service_name}} → {{gen_ai_request_model}} {{error_type}}",
                )],
            },
            Panel {
                title: "Time between chunks p95 (streams)",
                unit: "s",
                queries: &[(
                    r#"histogram_quantile(0.95, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_client_operation_time_per_output_chunk_seconds_bucket{service_name=~"$service",gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                    "{{service_name}} → {{gen_ai_request_model}}",
                )],
            },
            Panel {
                title: "Calls whose wire lacked the model or the usage (all services)",
                unit: "reqps",
                queries: &[(
                    "sum by (instance, field) (rate(sonde_gen_ai_missing_fields_total[$__rate_interval]))",
                    "{{instance}} {{field}}",
                )],
            },
            Panel {
                title: "Model servers: requests per second",
                unit: "reqps",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model) (rate(gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"}[$__rate_interval]))"#,
                    "{{service_name}} {{gen_ai_request_model}}",
                )],
            },
            Panel {
                title: "Model servers: 5xx ratio",
                unit: "percentunit",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model) (rate(gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model",error_type!=""}[$__rate_interval])) / sum by (service_name, gen_ai_request_model) (rate(gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"}[$__rate_interval]))"#,
                    "{{service_name}} {{gen_ai_request_model}}",
                )],
            },
            Panel {
                title: "Model servers: duration p50 / p95",
                unit: "s",
                queries: &[
                    (
                        r#"histogram_quantile(0.5, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_server_request_duration_seconds_bucket{gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                        "{{service_name}} {{gen_ai_request_model}} p50",
                    ),
                    (
                        r#"histogram_quantile(0.95, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_server_request_duration_seconds_bucket{gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                        "{{service_name}} {{gen_ai_request_model}} p95",
                    ),
                ],
            },
            Panel {
                title: "Model servers: time to first token p95, time per output token p95 (streams)",
                unit: "s",
                queries: &[
                    (
                        r#"histogram_quantile(0.95, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                        "{{service_name}} {{gen_ai_request_model}} first token",
                    ),
                    (
                        r#"histogram_quantile(0.95, sum by (service_name, gen_ai_request_model, le) (rate(gen_ai_server_time_per_output_token_seconds_bucket{gen_ai_request_model=~"$model"}[$__rate_interval])))"#,
                        "{{service_name}} {{gen_ai_request_model}} per output token",
                    ),
                ],
            },
            Panel {
                title: "Model servers: tokens per second, input and output",
                unit: "short",
                queries: &[(
                    r#"sum by (service_name, gen_ai_request_model, gen_ai_token_type) (rate(sonde_gen_ai_server_token_usage_sum{gen_ai_request_model=~"$model"}[$__rate_interval]))"#,
                    "{{service_name}} {{gen_ai_request_model}} {{gen_ai_token_type}}",
                )],
            },
            Panel {
                title: "Model servers: GPU SM utilization",
                unit: "percentunit",
                queries: &[(
                    r#"sum by (service_name, hw_id) (sonde_gpu_process_utilization_ratio and on (instance, service_name) group by (instance, service_name) (gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"}))"#,
                    "{{service_name}} on {{hw_id}}",
                )],
            },
            Panel {
                title: "Model servers: output tokens per second per GPU held (all their models)",
                unit: "short",
                queries: &[(
                    r#"sum by (service_name) (sum by (instance, service_name) (rate(sonde_gen_ai_server_token_usage_sum{gen_ai_token_type="output"}[$__rate_interval])) and on (instance, service_name) sonde_gpu_process_memory_usage_bytes) / count by (service_name) (group by (instance, hw_id, service_name) (sonde_gpu_process_memory_usage_bytes and on (instance, service_name) group by (instance, service_name) (gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"})))"#,
                    "{{service_name}}",
                )],
            },
            Panel {
                title: "Model servers: GPU memory held",
                unit: "bytes",
                queries: &[(
                    r#"sum by (service_name, hw_id) (sonde_gpu_process_memory_usage_bytes and on (instance, service_name) group by (instance, service_name) (gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"}))"#,
                    "{{service_name}} on {{hw_id}}",
                )],
            },
            Panel {
                title: "Model servers: power of the GPUs they hold, and their share by SM time",
                unit: "watt",
                queries: &[
                    (
                        r#"max by (instance, hw_id) (hw_power_watts) * on (instance, hw_id) group_right () group by (instance, hw_id, service_name) (sonde_gpu_process_memory_usage_bytes and on (instance, service_name) group by (instance, service_name) (gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"}))"#,
                        "{{service_name}} on {{hw_id}}",
                    ),
                    (
                        r#"sum by (service_name) (sum by (instance, hw_id, service_name) (sonde_gpu_process_utilization_ratio and on (instance, service_name) group by (instance, service_name) (gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"})) / on (instance, hw_id) group_left () (sum by (instance, hw_id) (sonde_gpu_process_utilization_ratio) > 0) * on (instance, hw_id) group_left () max by (instance, hw_id) (hw_power_watts))"#,
                        "{{service_name}} share",
                    ),
                ],
            },
            Panel {
                title: "Model servers: GPU energy per output token (all their models)",
                unit: "joule",
                queries: &[(
                    r#"sum by (service_name) (sum by (instance, hw_id, service_name) (avg_over_time(sonde_gpu_process_utilization_ratio[$__rate_interval])) / on (instance, hw_id) group_left () (sum by (instance, hw_id) (avg_over_time(sonde_gpu_process_utilization_ratio[$__rate_interval])) > 0) * on (instance, hw_id) group_left () sum by (instance, hw_id) (increase(hw_energy_joules_total[$__rate_interval]))) / (sum by (service_name) (increase(sonde_gen_ai_server_token_usage_sum{gen_ai_token_type="output"}[$__rate_interval])) > 0) and on (service_name) group by (service_name) (gen_ai_server_request_duration_seconds_count{gen_ai_request_model=~"$model"})"#,
                    "{{service_name}}",
                )],
            },
        ],
    },
];

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"})
}

fn render(d: &Dashboard) -> Value {
    let panels: Vec<Value> = d
        .panels
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let targets: Vec<Value> = p
                .queries
                .iter()
                .enumerate()
                .map(|(j, (expr, legend))| {
                    json!({
                        "datasource": datasource(),
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": ((b'A' + j as u8) as char).to_string(),
                    })
                })
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": datasource(),
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": targets,
            })
        })
        .collect();
    let mut panels = panels;
    if d.service_graph {
        panels.push(service_graph_panel(
            panels.len() + 1,
            panels.len().div_ceil(2) * 8,
        ));
    }
    let variables: Vec<Value> = d
        .variables
        .iter()
        .map(|v| {
            let query = format!("label_values({}, {})", v.metric, v.label);
            json!({
                "name": v.name,
                "label": v.label,
                "type": "query",
                "datasource": datasource(),
                "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "definition": query,
                "refresh": 2,
                "includeAll": true,
                "multi": true,
                "allValue": ".*",
                "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
            })
        })
        .collect();
    json!({
        "__inputs": [{
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes sonde",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "nodeGraph", "name": "Node graph", "version": ""},
        ],
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["sonde"],
        "editable": true,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables},
        "panels": panels,
    })
}

/// The node graph of sonde's `traces_service_graph_request_total` edges over the range (one
/// instant query; `label_join` makes the `id`, `source` and `target` fields a node graph
/// reads, and the value column becomes the edges' main statistic).
fn service_graph_panel(id: usize, y: usize) -> Value {
    let edges = r#"label_join(label_join(label_join(sum by (client, server) (rate(traces_service_graph_request_total[$__range])), "source", "", "client"), "target", "", "server"), "id", "->", "client", "server")"#;
    json!({
        "id": id,
        "type": "nodeGraph",
        "title": "Service graph (calls between services over the range, from sonde's traces_service_graph_* edges)",
        "datasource": datasource(),
        "gridPos": {"h": 12, "w": 24, "x": 0, "y": y},
        "options": {"edges": {"mainStatUnit": "reqps"}, "nodes": {"mainStatUnit": "reqps"}},
        "targets": [{
            "datasource": datasource(),
            "expr": edges,
            "format": "table",
            "instant": true,
            "range": false,
            "refId": "edges",
        }],
        "transformations": [
            {"id": "renameByRegex", "options": {"regex": "Value.*", "renamePattern": "mainstat"}}
        ],
    })
}

fn text(d: &Dashboard) -> String {
    let mut s = serde_json::to_string_pretty(&render(d)).expect("JSON values serialize");
    s.push('\n');
    s
}

/// Writes every dashboard into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for d in DASHBOARDS {
        let path = dir.join(d.file);
        std::fs::write(&path, text(d))?;
        eprintln!("==> wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_dashboards_are_what_the_generator_writes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
        for d in DASHBOARDS {
            let committed = std::fs::read_to_string(dir.join(d.file)).unwrap_or_default();
            assert!(
                committed == text(d),
                "deploy/grafana/{} is stale: run `cargo xtask dashboards`",
                d.file
            );
        }
    }
}
