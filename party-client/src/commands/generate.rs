//! `generate`: one prompt, streamed to stdout as tokens arrive.

use super::{PartyArgs, SamplingArgs};
use crate::client::{Client, LocalModel};
use crate::text::{StreamDecoder, TextCodec};
use anyhow::Result;
use clap::Args;
use shardlm_configs::Variant;
use shardlm_model::generate::{generate, StopPolicy};
use shardlm_model::sampling::Sampler;
use shardlm_model::Rows;
use shardlm_variants::plan::SessionShape;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model directory (the client's copy of the public weights).
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Private variant.
    #[arg(long, default_value = "v2")]
    pub variant: Variant,
    #[command(flatten)]
    pub(crate) party: PartyArgs,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Format the prompt as one user turn of the Qwen chat template.
    #[arg(long)]
    pub chat: bool,
    /// Maximum number of new tokens (a private session always runs this many steps
    /// unless `--stop-at-eos`).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Print prefill time, decode throughput and traffic at the end.
    #[arg(long)]
    pub timing: bool,
}

fn print_stream(codec: &TextCodec) -> impl FnMut(u32) + '_ {
    let mut stream = StreamDecoder::new(codec);
    move |t| {
        if let Ok(s) = stream.push(t) {
            let mut out = std::io::stdout();
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        }
    }
}

/// Runs `generate`.
pub fn run(a: GenerateArgs) -> Result<()> {
    let sampling = a.sampling.config()?;
    let variant = a.party.variant(a.variant);
    let stop = a.sampling.stop_policy(variant);
    if stop == StopPolicy::AtEos && variant != Variant::Local {
        eprintln!("note: --stop-at-eos: the server party sees how many tokens were generated");
    }
    let t_load = Instant::now();
    let model = LocalModel::load(&a.model_dir)?;
    let codec = TextCodec::load(&model.dir.tokenizer)?;
    let prompt = codec.encode_prompt(&a.prompt, a.chat)?;
    let mut client = Client::new(variant, &a.party.options()?, &model)?;
    let mut session = client.open(&model, SessionShape::new(prompt.len(), a.max_tokens, Rows::Last))?;
    let load_s = t_load.elapsed().as_secs_f64();
    for note in session.notes() {
        eprintln!("{variant}: {note}");
    }
    let mut sampler = Sampler::new(sampling);
    let config = &model.dir.config;
    let g = generate(
        |t, p, r| session.forward(t, p, r).map(Some),
        config,
        &prompt,
        a.max_tokens,
        &mut sampler,
        stop,
        print_stream(&codec),
    )?;
    let traffic = client.finish(session)?;
    println!();
    let _ = std::io::stdout().flush();
    if a.timing {
        eprintln!(
            "timing ({}): setup {:.2} s, prompt {} tokens, prefill {:.3} s, {} new tokens, decode {:.2} tokens/s{}",
            client.describe(),
            load_s,
            prompt.len(),
            g.prefill.as_secs_f64(),
            g.tokens.len(),
            g.decode_tokens_per_second(),
            if g.dummy.is_empty() { String::new() } else { format!(", {} dummy steps after the end token", g.dummy.len()) }
        );
        if variant != Variant::Local {
            eprintln!(
                "traffic: {} bytes sent, {} bytes received, {} rounds",
                traffic.bytes_sent(),
                traffic.bytes_received(),
                traffic.rounds
            );
        }
    }
    Ok(())
}
