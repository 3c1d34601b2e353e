//! The launcher-agent protocol: any bytes on the ssh session decode as messages or fail
//! cleanly, in both directions; a message that decodes encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ranks_launcher::proto::{read_msg, write_msg, FromAgent, ToAgent};

fn check<T: serde::Serialize + for<'de> serde::Deserialize<'de>>(data: &[u8]) {
    let mut r = data;
    while let Ok(Some(m)) = read_msg::<T>(&mut r) {
        let mut again = Vec::new();
        write_msg(&mut again, &m).expect("a decoded message encodes");
        let back: T = read_msg(&mut &again[..]).expect("re-decodes").expect("one message");
        let mut twice = Vec::new();
        write_msg(&mut twice, &back).expect("encodes again");
        assert_eq!(again, twice);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ToAgent>(data);
    check::<FromAgent>(data);
});
