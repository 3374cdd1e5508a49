//! Parses arbitrary bytes as a CTAP2 response (status byte, then CBOR) of
//! getInfo, makeCredential and getAssertion, and describes what parsed the
//! way the bring-up tools print it.

#![no_main]

use cardgate::bringup::describe;
use cardgate::ctap::get_assertion::GetAssertionResponse;
use cardgate::ctap::get_info::GetInfo;
use cardgate::ctap::make_credential::MakeCredentialResponse;
use cardgate::ctap::status::split_status;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = split_status(data) else {
        return;
    };

    if let Ok(info) = GetInfo::parse(body) {
        let _ = describe::get_info(&info);
        let _ = info.uv_request();
    }
    if let Ok(response) = MakeCredentialResponse::parse(body) {
        let _ = describe::make_credential(&response);
        let _ = MakeCredentialResponse::parse(&response.encode());
    }
    if let Ok(response) = GetAssertionResponse::parse(body) {
        let _ = describe::get_assertion(&response);
        let _ = GetAssertionResponse::parse(&response.encode());
    }
});
