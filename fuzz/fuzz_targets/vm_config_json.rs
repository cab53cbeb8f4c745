//! `vm.create`'s body: any bytes as Cloud Hypervisor's `VmConfig` JSON.
//! Whatever comes, nothing panics; what is taken keeps every rule across
//! devices, and what `vm.info` then answers is taken back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::schema::VmConfigJson;
use vmm::config::VmConfig;

fuzz_target!(|bytes: &[u8]| {
    let Ok(config) = VmConfig::from_json(bytes) else {
        return;
    };
    config
        .validate()
        .expect("a configuration taken keeps the rules");
    let answered = serde_json::to_vec(&VmConfigJson::from(&config)).expect("serializes");
    let again = VmConfig::from_json(&answered).expect("what vm.info says is taken back");
    assert_eq!(again, config);
});
