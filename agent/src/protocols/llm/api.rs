//! Which LLM API a request calls, from its method and path.

/// The API shape of a call, from its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `POST .../v1/chat/completions`
    OpenAiChat,
    /// `POST .../v1/completions`
    OpenAiCompletions,
    /// `POST .../v1/embeddings`
    OpenAiEmbeddings,
    /// `POST .../v1/responses`
    OpenAiResponses,
    /// `POST .../v1/messages`
    AnthropicMessages,
    /// `POST .../api/chat`
    OllamaChat,
    /// `POST .../api/generate`
    OllamaGenerate,
}

impl Api {
    /// `gen_ai.operation.name`.
    pub fn operation(self) -> &'static str {
        match self {
            Api::OpenAiChat | Api::AnthropicMessages | Api::OllamaChat | Api::OpenAiResponses => {
                "chat"
            }
            Api::OpenAiCompletions | Api::OllamaGenerate => "text_completion",
            Api::OpenAiEmbeddings => "embeddings",
        }
    }

    /// `gen_ai.provider.name` when nothing more specific is known: the API's own shape.
    pub fn default_provider(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic",
            Api::OllamaChat | Api::OllamaGenerate => "ollama",
            _ => "openai",
        }
    }
}

/// The LLM API a request is a call of, if any. Only POSTs; the path may carry a prefix
/// (`/openai/v1/chat/completions` behind a gateway).
pub fn api_of(method: &str, path: &str) -> Option<Api> {
    if method != "POST" {
        return None;
    }
    let path = path.trim_end_matches('/');
    const SUFFIXES: [(&str, Api); 7] = [
        ("/v1/chat/completions", Api::OpenAiChat),
        ("/v1/completions", Api::OpenAiCompletions),
        ("/v1/embeddings", Api::OpenAiEmbeddings),
        ("/v1/responses", Api::OpenAiResponses),
        ("/v1/messages", Api::AnthropicMessages),
        ("/api/chat", Api::OllamaChat),
        ("/api/generate", Api::OllamaGenerate),
    ];
    SUFFIXES
        .iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, api)| *api)
}

/// The provider behind a known API host (`api.openai.com`), from the request's `Host`
/// (which clear-text calls to a provider rarely carry; TLS makes this the common case).
pub fn provider_of_host(host: &str) -> Option<&'static str> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    const HOSTS: [(&str, &str); 10] = [
        ("api.openai.com", "openai"),
        ("api.anthropic.com", "anthropic"),
        ("generativelanguage.googleapis.com", "gcp.gemini"),
        ("api.mistral.ai", "mistral_ai"),
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("api.x.ai", "x_ai"),
        ("api.perplexity.ai", "perplexity"),
        ("api.cohere.com", "cohere"),
        ("api.cohere.ai", "cohere"),
    ];
    if let Some((_, p)) = HOSTS.iter().find(|(h, _)| *h == host) {
        return Some(p);
    }
    if host.ends_with(".openai.azure.com") {
        return Some("azure.ai.openai");
    }
    if host.starts_with("bedrock-runtime.") && host.ends_with(".amazonaws.com") {
        return Some("aws.bedrock");
    }
    None
}

/// The provider a response header names by its presence: OpenAI sets `openai-version`,
/// `openai-organization` and `openai-processing-ms`; Anthropic `anthropic-ratelimit-*` and
/// `anthropic-organization-id`. (Only the header's name is looked at, never its value.)
pub fn provider_of_header(name: &str) -> Option<&'static str> {
    let has = |prefix: &str| {
        name.as_bytes()
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    if has("openai-") {
        Some("openai")
    } else if has("anthropic-") {
        Some("anthropic")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apis_by_method_and_path() {
        assert_eq!(
            api_of("POST", "/v1/chat/completions"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(
            api_of("POST", "/openai/deployments/x/v1/chat/completions/"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(api_of("POST", "/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(api_of("POST", "/api/generate"), Some(Api::OllamaGenerate));
        assert_eq!(api_of("GET", "/v1/chat/completions"), None);
        assert_eq!(api_of("POST", "/v1/chat"), None);
        assert_eq!(Api::OpenAiEmbeddings.operation(), "embeddings");
        assert_eq!(Api::OllamaChat.default_provider(), "ollama");
    }

    #[test]
    fn providers_by_host_and_header() {
        assert_eq!(provider_of_host("api.openai.com"), Some("openai"));
        assert_eq!(provider_of_host("API.Anthropic.com."), Some("anthropic"));
        assert_eq!(
            provider_of_host("myres.openai.azure.com"),
            Some("azure.ai.openai")
        );
        assert_eq!(
            provider_of_host("bedrock-runtime.us-east-1.amazonaws.com"),
            Some("aws.bedrock")
        );
        assert_eq!(provider_of_host("localhost"), None);
        assert_eq!(provider_of_host("openai.com.evil.example"), None);
        assert_eq!(provider_of_header("OpenAI-Version"), Some("openai"));
        assert_eq!(
            provider_of_header("anthropic-ratelimit-requests-limit"),
            Some("anthropic")
        );
        assert_eq!(provider_of_header("x-request-id"), None);
        assert_eq!(provider_of_header("open"), None);
    }
}
