//! AFL target `signed_query`: the property is in s3warden::fuzzing::signed_query.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        s3warden::fuzzing::signed_query(data);
    });
}
