//! Oracle test for `reclock_to_watermark`: the output equals a from-scratch
//! computation of W(k) over the whole input, for 1 and 4 workers and any
//! distribution of chunks over workers.

use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::{Rng, SeedableRng};
use weft_operators::by_time::{SinkByTime, SinkEvent, SinkTarget};
use weft_operators::reclock::Reclock;

type Rec = (u32, Option<u64>); // (record id, clock)

fn naive(chunks: &[Vec<Rec>]) -> Vec<(u64, Rec)> {
    let mut w = 0;
    let mut out = Vec::new();
    for chunk in chunks {
        w = chunk.iter().filter_map(|r| r.1).fold(w, u64::max);
        for r in chunk {
            out.push((w, *r));
        }
    }
    out.sort();
    out
}

fn run(chunks: Vec<Vec<Rec>>, workers: usize, seed: u64) -> Vec<(u64, Rec)> {
    let result = Arc::new(Mutex::new(Vec::new()));
    let sink = result.clone();
    let chunks = Arc::new(chunks);
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let sink = sink.clone();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, coll) = scope.new_collection::<Rec, isize>();
            coll.reclock_to_watermark("Reclock", |r: &Rec| r.1)
                .sink_by_time("Collect", SinkTarget::Worker(0), move |ev| {
                    if let SinkEvent::Updates { time, updates } = ev {
                        let mut s = sink.lock().unwrap();
                        for (r, diff) in updates {
                            assert_eq!(*diff, 1);
                            s.push((*time, *r));
                        }
                    }
                });
            input
        });
        // Chunks are spread over workers pseudo-randomly; some chunks are empty.
        for (k, chunk) in chunks.iter().enumerate() {
            input.advance_to(k as u64);
            let owner =
                ((k as u64).wrapping_mul(0x9e37_79b9).wrapping_add(seed) % peers as u64) as usize;
            if owner == index {
                for r in chunk {
                    input.insert(*r);
                }
            }
            if k % 3 == 0 {
                input.flush();
                worker.step();
            }
        }
        input.close();
        while worker.step() {}
    })
    .unwrap();
    let mut out = result.lock().unwrap().clone();
    out.sort();
    out
}

#[test]
fn reclock_matches_the_naive_watermark() {
    for seed in 0..12u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut id = 0;
        let chunks: Vec<Vec<Rec>> = (0..rng.gen_range(1..40))
            .map(|_| {
                (0..rng.gen_range(0..8))
                    .map(|_| {
                        id += 1;
                        let clock = if rng.gen_bool(0.1) {
                            None
                        } else {
                            Some(rng.gen_range(0..10_000))
                        };
                        (id, clock)
                    })
                    .collect()
            })
            .collect();
        let expected = naive(&chunks);
        for workers in [1, 4] {
            let got = run(chunks.clone(), workers, seed);
            assert_eq!(got, expected, "seed {seed}, {workers} workers");
        }
    }
}
