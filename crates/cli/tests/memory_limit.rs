//! `resources.limits.memory` is enforced: a process that allocates past the limit is killed, one
//! that stays below it runs; the sandbox survives the kill of an exec'd process.

mod common;

use common::{Opts, Server};
use serde_json::json;

#[test]
fn memory_limit_is_enforced() {
    if common::skip_unless_root("memory_limit_is_enforced") {
        return;
    }
    let srv = Server::start(Opts::new(4));
    let pool = srv.create_pool(&json!({
        "name": "small",
        "template": {
            "idleImage": "pause",
            "containers": [{
                "name": "main",
                "image": "host",
                "command": ["sleep", "infinity"],
                "resources": { "limits": { "memory": "64Mi" } }
            }]
        },
        "replicas": 1,
        "podCreationImagePolicy": "PoolDefaultImage"
    }));
    assert_eq!(pool["memory"], "64Mi", "pool view sums the limits: {pool}");
    srv.wait_pool_idle("small", 1);
    let sb = srv.claim(&json!({"poolName": "small"}));
    let id = sb["sandboxId"].as_str().unwrap().to_string();
    assert_eq!(sb["memory"], "64Mi", "{sb}");

    // 10 MB fits.
    let r = srv.exec(&id, &json!({"command": ["python3", "-c", "x = bytearray(10*1024*1024); print(len(x))"]}));
    assert_eq!(r["exitCode"], 0, "{r}");
    assert_eq!(r["stdout"], "10485760\n", "{r}");

    // 200 MB does not.
    let r = srv.exec(&id, &json!({"command": ["python3", "-c", "x = bytearray(200*1024*1024); print('allocated')"]}));
    let code = r["exitCode"].as_i64().unwrap();
    assert_ne!(code, 0, "200 MB allocation under a 64Mi limit succeeded: {r}");
    assert_ne!(r["stdout"], "allocated\n", "{r}");
    eprintln!("200 MB under 64Mi: exitCode {code}, stderr {:?}", r["stderr"]);
    assert!(
        code == 137 || r["stderr"].as_str().unwrap_or("").contains("MemoryError"),
        "expected SIGKILL (137) or MemoryError: {r}"
    );

    // The sandbox itself is still usable.
    let s = srv.sandbox(&id);
    assert_eq!(s["status"], "Running", "{s}");
    assert_eq!(srv.sh_ok(&id, "echo still-alive"), "still-alive\n");
    srv.release_and_wait(&id);
}
