fn main() { eprintln!("ringcast: server not built yet"); std::process::exit(1) }
