//! `demo`: the first thing to run on a fresh machine. Synthesizes a tiny Qwen2, runs the
//! server party in this process over QUIC on 127.0.0.1, generates privately (v2) and
//! prints the result next to the plaintext engine's, with traffic and times.

use super::PartyArgs;
use crate::client::{Client, LocalModel};
use crate::text::TextCodec;
use anyhow::{bail, Result};
use clap::Args;
use shardlm_configs::{ModelConfig, Variant};
use shardlm_model::generate::{generate, StopPolicy};
use shardlm_model::sampling::{Sampler, SamplingConfig};
use shardlm_model::Rows;
use shardlm_variants::plan::SessionShape;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Prompt for the demo.
    #[arg(short, long, default_value = "Hello from ShardLM!")]
    pub prompt: String,
    /// New tokens.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
    /// Where to write the synthetic model (default: a temporary directory).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// Runs `demo`.
pub fn run(a: DemoArgs) -> Result<()> {
    let tmp;
    let dir = match &a.model_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let t0 = Instant::now();
    let config = ModelConfig::preset("tiny")?;
    shardlm_model::synth::write_synthetic_model(&config, &dir, 7)?;
    let model = LocalModel::load(&dir)?;
    let codec = TextCodec::load(&model.dir.tokenizer)?;
    let prompt = codec.encode_prompt(&a.prompt, true)?;
    println!(
        "ShardLM demo: synthetic `tiny` Qwen2 model ({} parameters) in {}",
        config.parameter_count(),
        dir.display()
    );
    println!("prompt: {:?} ({} tokens, chat-formatted)", a.prompt, prompt.len());
    let shape = SessionShape::new(prompt.len(), a.max_tokens, Rows::Last);

    let plain = run_once(Variant::Local, &model, &prompt, shape)?;
    let private = run_once(Variant::V2, &model, &prompt, shape)?;
    let (device, plain_s) = (plain.device, plain.generate_s);
    let (traffic, deal_s, private_s) = (private.traffic, private.open_s, private.generate_s);
    let (plain, private) = (plain.generation, private.generation);

    let show = |ids: &[u32]| codec.decode(ids).map(|s| format!("{s:?}"));
    println!();
    println!("{:<22} {device}", "backend:");
    println!("{:<22} {}", "plaintext (local):", show(&plain.tokens)?);
    println!("{:<22} {}", "private (v2, QUIC):", show(&private.tokens)?);
    println!("{:<22} {:?}", "plaintext token ids:", plain.tokens);
    println!("{:<22} {:?}", "private token ids:", private.tokens);
    println!(
        "{:<22} the model's weights are random, so the text means nothing (a random tied-embedding model repeats its last token); what matters is that the two rows agree",
        "note:"
    );
    println!(
        "{:<22} {}",
        "identical tokens:",
        if plain.tokens == private.tokens { "yes" } else { "NO (see eval for logit differences)" }
    );
    println!(
        "{:<22} {} bytes sent, {} bytes received, {} rounds ({} forward passes, the whole budget)",
        "private traffic:",
        traffic.bytes_sent(),
        traffic.bytes_received(),
        traffic.rounds,
        private.forward_passes()
    );
    println!(
        "{:<22} plaintext {:.1} ms, private {:.1} ms (prefill {:.1} ms), dealing and connecting {:.1} ms, total {:.2} s",
        "times:",
        plain_s * 1e3,
        private_s * 1e3,
        private.prefill.as_secs_f64() * 1e3,
        deal_s * 1e3,
        t0.elapsed().as_secs_f64()
    );
    if plain.tokens != private.tokens {
        bail!("the private generation differs from the plaintext one");
    }
    Ok(())
}

/// One generation of the demo, with what it printed about it.
struct DemoRun {
    generation: shardlm_model::generate::Generation,
    traffic: shardlm_transport::Counters,
    open_s: f64,
    generate_s: f64,
    device: String,
}

/// Generates greedily with `variant` (a loopback server for private variants), the
/// whole budget for private variants so that the server cannot tell the length.
fn run_once(variant: Variant, model: &LocalModel, prompt: &[u32], shape: SessionShape) -> Result<DemoRun> {
    let config = &model.dir.config;
    let mut client = Client::new(variant, &PartyArgs::loopback().options()?, model)?;
    let t = Instant::now();
    let mut session = client.open(model, shape)?;
    let open_s = t.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(SamplingConfig::default());
    let t = Instant::now();
    let generation = generate(
        |t, p, r| session.forward(t, p, r).map(Some),
        config,
        prompt,
        shape.max_new_tokens,
        &mut sampler,
        if variant == Variant::Local { StopPolicy::AtEos } else { StopPolicy::FullBudget },
        |_| {},
    )?;
    let generate_s = t.elapsed().as_secs_f64();
    let traffic = client.finish(session)?;
    Ok(DemoRun { generation, traffic, open_s, generate_s, device: client.device() })
}
