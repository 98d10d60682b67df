//! Fusion: turns what the vision path saw (a `Scene`), what was asked (typed or transcribed) and recent exchanges
//! into the language decoder's prompt under a token budget; checks the decoder's sentence against the scene; and
//! builds the deterministic sentence used when the decoder is off, out of budget or not faithful to the scene.

use lookout_models::llm::chat::Message;
use lookout_models::vision::scene::plural;
use lookout_models::vision::Scene;
use serde::Serialize;

/// Longest typed question accepted; longer ones are refused rather than cut.
pub const MAX_QUESTION_BYTES: usize = 2000;

/// What the decoder is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// One sentence about the scene.
    Caption,
    /// An answer to a question about the scene.
    Answer(String),
}

/// One earlier question and its answer, oldest first in a history.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub question: String,
    pub answer: String,
}

/// The facts of a scene in words, and the labels the detector can name at all.
pub struct SceneFacts<'a> {
    pub scene: &'a Scene,
    /// Every label the detector knows (COCO-80); a known label that is not in the scene must not be claimed.
    pub known_labels: &'a [String],
}

/// The messages for the decoder and what had to be left out to fit the budget.
#[derive(Debug, Clone, Serialize)]
pub struct FusedPrompt {
    pub messages: Vec<MessageOut>,
    /// The scene as the decoder is told it.
    pub facts: String,
    /// Earlier exchanges included.
    pub history_used: usize,
    /// Parts dropped to fit the token budget ("history", "text", "objects").
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageOut {
    pub role: String,
    pub content: String,
}

impl FusedPrompt {
    pub fn chat(&self) -> Vec<Message> {
        self.messages.iter().map(|m| Message::new(&m.role, m.content.clone())).collect()
    }
}

/// How a decoder's sentence relates to the scene.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Grounding {
    /// Detected labels the sentence names.
    pub named: Vec<String>,
    /// Detected labels the sentence leaves out.
    pub missing: Vec<String>,
    /// Known labels the sentence names although the scene lacks them.
    pub invented: Vec<String>,
    /// Labels given a count that differs from the detected one ("3 people" when 8 were seen).
    pub miscounted: Vec<String>,
}

impl Grounding {
    /// Faithful: nothing invented or miscounted, and for a caption every detected label named.
    pub fn faithful(&self, task: &Task) -> bool {
        self.invented.is_empty() && self.miscounted.is_empty() && (*task != Task::Caption || self.missing.is_empty())
    }
}

const NUMBER_WORDS: [&str; 13] =
    ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"];

/// Other words for a label that a sentence may use.
fn synonyms(label: &str) -> &'static [&'static str] {
    match label {
        "person" => &["person", "persons", "people", "man", "men", "woman", "women", "child", "children", "boy", "girl", "kid", "kids"],
        "cup" => &["mug", "mugs"],
        "tv" => &["television", "tvs"],
        "couch" => &["sofa", "sofas"],
        "motorcycle" => &["motorbike", "motorbikes"],
        "airplane" => &["plane", "planes", "aircraft"],
        "bicycle" => &["bike", "bikes"],
        "cell phone" => &["phone", "phones", "smartphone"],
        _ => &[],
    }
}

/// Lowercase words of `text` (letters and digits), for whole-word matching.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// Positions in `words` where `phrase` (one or more words) starts.
fn find_phrase(words: &[String], phrase: &str) -> Vec<usize> {
    let target: Vec<String> = phrase.split(' ').map(str::to_lowercase).collect();
    if target.is_empty() || words.len() < target.len() {
        return Vec::new();
    }
    (0..=words.len() - target.len()).filter(|i| words[*i..*i + target.len()] == target[..]).collect()
}

/// The ways a sentence can name `label`: the label, its plural, its synonyms.
fn names_of(label: &str) -> Vec<String> {
    let mut names = vec![label.to_string(), plural(label)];
    names.extend(synonyms(label).iter().map(|s| s.to_string()));
    names
}

fn number_value(word: &str) -> Option<usize> {
    word.parse().ok().or_else(|| NUMBER_WORDS.iter().position(|w| *w == word)).or(match word {
        "a" | "an" | "single" => Some(1),
        "pair" | "couple" => Some(2),
        "trio" => Some(3),
        _ => None,
    })
}

impl SceneFacts<'_> {
    /// Object phrases, most numerous first: "8 people", "6 kites", "a dog".
    fn object_phrases(&self) -> Vec<String> {
        let mut counts: Vec<(&String, &usize)> = self.scene.counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        counts
            .into_iter()
            .map(|(label, count)| match count {
                1 => format!("{} {label}", if label.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }),
                n => format!("{n} {}", plural(label)),
            })
            .collect()
    }

    fn text_phrase(&self) -> Option<String> {
        let lines: Vec<&str> = self.scene.text.iter().map(|t| t.text.trim()).filter(|t| !t.is_empty()).collect();
        (!lines.is_empty()).then(|| format!("a sign that reads \"{}\"", lines.join(" ")))
    }

    /// The scene in words: "8 people and 6 kites", "a cup and a sign that reads \"EXIT\"", or "nothing I recognize".
    fn describe(&self, with_objects: usize, with_text: bool) -> String {
        let mut phrases: Vec<String> = self.object_phrases().into_iter().take(with_objects).collect();
        if with_text {
            phrases.extend(self.text_phrase());
        }
        join_and(&phrases).unwrap_or_else(|| "nothing I recognize".to_string())
    }

    /// The labels a question asks about, among the known ones ("how many people" → person).
    fn labels_in(&self, text: &str) -> Vec<&str> {
        let words = words(text);
        self.known_labels
            .iter()
            .filter(|label| names_of(label).iter().any(|name| !find_phrase(&words, name).is_empty()))
            .map(String::as_str)
            .collect()
    }

    /// Known labels a question names that the scene lacks: said explicitly, so a small model does not guess.
    fn absent_asked(&self, task: &Task) -> Vec<String> {
        match task {
            Task::Caption => Vec::new(),
            Task::Answer(question) => self
                .labels_in(question)
                .into_iter()
                .filter(|label| !self.scene.counts.contains_key(*label))
                .map(plural)
                .collect(),
        }
    }

    /// Checks `sentence` against the scene.
    pub fn grounding(&self, sentence: &str) -> Grounding {
        let words = words(sentence);
        let mut g = Grounding::default();
        for label in self.known_labels {
            let places: Vec<usize> = names_of(label).iter().flat_map(|name| find_phrase(&words, name)).collect();
            match (self.scene.counts.get(label), places.is_empty()) {
                (Some(_), false) => g.named.push(label.clone()),
                (Some(_), true) => g.missing.push(label.clone()),
                (None, false) => {
                    // "no people" / "zero dogs" claim nothing.
                    let denied = places.iter().all(|p| *p > 0 && matches!(words[p - 1].as_str(), "no" | "zero" | "any"));
                    if !denied {
                        g.invented.push(label.clone());
                    }
                }
                (None, true) => {}
            }
            if let Some(count) = self.scene.counts.get(label) {
                let said: Vec<usize> = places.iter().filter_map(|p| p.checked_sub(1).and_then(|q| number_value(&words[q]))).collect();
                if said.iter().any(|n| n != count) {
                    g.miscounted.push(label.clone());
                }
            }
        }
        g
    }

    /// For a "how many" question about a known label: that label and its detected count.
    fn asked_count(&self, task: &Task) -> Option<(&str, usize)> {
        let Task::Answer(question) = task else { return None };
        let counting = words(question).windows(2).any(|w| w[0] == "how" && w[1] == "many");
        let label = *self.labels_in(question).first()?;
        counting.then(|| (label, self.scene.counts.get(label).copied().unwrap_or(0)))
    }

    /// Whether `sentence` states the detected count a "how many" question asks for (true for other tasks).
    pub fn states_asked_count(&self, task: &Task, sentence: &str) -> bool {
        match self.asked_count(task) {
            Some((_, count)) => words(sentence).iter().any(|w| number_value(w) == Some(count)),
            None => true,
        }
    }

    /// A yes/no question about nothing the detector or the text reader can report ("is the door open?" when
    /// doors are not among the labels and no text mentions one): the decoder would only guess.
    pub fn beyond_perception(&self, task: &Task) -> bool {
        let Task::Answer(question) = task else { return false };
        let asked = words(question);
        let yes_no = asked.first().is_some_and(|w| {
            matches!(w.as_str(), "is" | "are" | "was" | "were" | "does" | "do" | "did" | "can" | "could" | "has" | "have" | "will")
        });
        let seen_text: Vec<String> = self.scene.text.iter().flat_map(|t| words(&t.text)).filter(|w| w.len() > 2).collect();
        yes_no && self.labels_in(question).is_empty() && !asked.iter().any(|w| seen_text.contains(w))
    }

    /// The sentence used without the decoder: a caption, a count for "how many" questions, else what is seen.
    pub fn sentence(&self, task: &Task) -> String {
        if self.beyond_perception(task) {
            return format!("I can't tell from what I can see; I see {}.", self.describe(usize::MAX, true));
        }
        match (task, self.asked_count(task)) {
            (Task::Caption, _) => capitalize(&format!("a photo with {}.", self.describe(usize::MAX, true))),
            (_, Some((label, 0))) => format!("I see no {}.", plural(label)),
            (_, Some((label, 1))) => format!("There is 1 {label}."),
            (_, Some((label, n))) => format!("There are {n} {}.", plural(label)),
            (_, None) => format!("I see {}.", self.describe(usize::MAX, true)),
        }
    }

    /// The decoder's messages for `task`, keeping the prompt within `budget` tokens as counted by `count_tokens`
    /// (which renders and tokenizes the chat). History goes first, then the text, then the least numerous objects.
    pub fn prompt(
        &self,
        task: &Task,
        history: &[Exchange],
        budget: usize,
        count_tokens: &mut dyn FnMut(&[Message]) -> usize,
    ) -> Option<FusedPrompt> {
        let n_objects = self.scene.counts.len();
        let absent = self.absent_asked(task);
        let mut attempts: Vec<(usize, bool, usize, Vec<String>)> = Vec::new();
        for keep_history in (0..=history.len()).rev() {
            let dropped = if keep_history < history.len() { vec!["history".to_string()] } else { vec![] };
            attempts.push((keep_history, true, n_objects, dropped));
        }
        attempts.push((0, false, n_objects, vec!["history".into(), "text".into()]));
        for keep in (1..n_objects).rev() {
            attempts.push((0, false, keep, vec!["history".into(), "text".into(), "objects".into()]));
        }
        for (keep_history, with_text, with_objects, dropped) in attempts {
            let mut facts = format!("The photo shows {}.", self.describe(with_objects, with_text));
            if !absent.is_empty() {
                facts.push_str(&format!(" There are no {} in it.", join_and(&absent).unwrap_or_default()));
            }
            let request = match task {
                Task::Caption => "Write one sentence about the photo that mentions each of them.".to_string(),
                Task::Answer(question) => question.trim().to_string(),
            };
            let mut messages = Vec::new();
            for exchange in &history[history.len() - keep_history..] {
                messages.push(MessageOut { role: "user".into(), content: exchange.question.clone() });
                messages.push(MessageOut { role: "assistant".into(), content: exchange.answer.clone() });
            }
            messages.push(MessageOut { role: "user".into(), content: format!("{facts} {request}") });
            let fused = FusedPrompt { messages, facts, history_used: keep_history, dropped };
            if count_tokens(&fused.chat()) <= budget {
                return Some(fused);
            }
        }
        None
    }
}

/// Words that open a clause a small model tacks on after stating the facts (", with 9 people on the left",
/// ", which is a classic example of ..."): embellishment the facts never gave it.
const TACKED_ON: [&str; 11] =
    ["with", "which", "where", "each", "specifically", "showcasing", "featuring", "making", "creating", "as", "while"];

/// The decoder's first complete sentence, cut before the first tacked-on clause (a "with ..." phrase anywhere);
/// None when the decoder never finished a sentence (it ran on to its token limit).
pub fn answer_sentence(text: &str) -> Option<String> {
    let sentence = first_sentence(text);
    if !sentence.ends_with(['.', '!', '?']) {
        return None;
    }
    let body = sentence.trim_end_matches(['.', '!', '?']);
    let after_comma = body.match_indices(", ").find(|(at, _)| {
        let next = body[at + 2..].split_whitespace().next().unwrap_or("").to_lowercase();
        TACKED_ON.contains(&next.as_str())
    });
    let cut = [after_comma.map(|(at, _)| at), body.find(" with ")].into_iter().flatten().min();
    Some(match cut {
        Some(at) => format!("{}.", &body[..at]),
        None => sentence,
    })
}

/// The first sentence of a decoder's answer (a small model often runs on), trimmed.
fn first_sentence(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?') {
            let next = text[i + c.len_utf8()..].chars().next();
            let prev_digit = text[..i].chars().last().is_some_and(|p| p.is_ascii_digit());
            let next_digit = next.is_some_and(|n| n.is_ascii_digit());
            if next.is_none_or(char::is_whitespace) && !(prev_digit && next_digit) {
                end = i + c.len_utf8();
                break;
            }
        }
    }
    text[..end].trim().to_string()
}

fn join_and(items: &[String]) -> Option<String> {
    match items {
        [] => None,
        [one] => Some(one.clone()),
        [init @ .., last] => Some(format!("{} and {last}", init.join(", "))),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_models::vision::detections::Detection;

    fn scene(objects: &[(&str, usize)]) -> Scene {
        let mut detections = Vec::new();
        for (label, n) in objects {
            for i in 0..*n {
                let x = i as f32 * 10.0;
                detections.push(Detection { label_id: 0, label: label.to_string(), score: 0.9, bbox: [x, 0.0, x + 5.0, 5.0] });
            }
        }
        Scene::new(100, 100, detections, Vec::new())
    }

    fn labels() -> Vec<String> {
        ["person", "bicycle", "car", "dog", "kite", "cup", "horse", "cat", "hot dog"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn facts_and_fallback_sentences() {
        let s = scene(&[("person", 8), ("kite", 6), ("dog", 1)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        assert_eq!(facts.describe(usize::MAX, true), "8 people, 6 kites and a dog");
        assert_eq!(facts.sentence(&Task::Caption), "A photo with 8 people, 6 kites and a dog.");
        assert_eq!(facts.sentence(&Task::Answer("How many people are there?".into())), "There are 8 people.");
        assert_eq!(facts.sentence(&Task::Answer("how many cats?".into())), "I see no cats.");
        assert_eq!(facts.sentence(&Task::Answer("What do you see?".into())), "I see 8 people, 6 kites and a dog.");
        let door = Task::Answer("Is the door open?".into());
        assert!(facts.beyond_perception(&door) && !facts.beyond_perception(&Task::Answer("Is there a dog?".into())));
        assert_eq!(facts.sentence(&door), "I can't tell from what I can see; I see 8 people, 6 kites and a dog.");
    }

    #[test]
    fn grounding_flags_invented_missing_and_miscounted_labels() {
        let s = scene(&[("person", 8), ("kite", 6)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        let good = facts.grounding("Eight people fly 6 kites on the beach.");
        assert!(good.faithful(&Task::Caption), "{good:?}");
        assert_eq!(facts.grounding("A person flies a kite.").miscounted, ["person", "kite"]);
        let bad = facts.grounding("Three men and a dog watch the kites.");
        assert_eq!(bad.invented, ["dog"]);
        assert_eq!(bad.miscounted, ["person"]);
        let partial = facts.grounding("Kites fill the sky, and there are no cats.");
        assert_eq!(partial.missing, ["person"]);
        assert!(partial.invented.is_empty(), "a denied label is not invented: {partial:?}");
        assert!(!partial.faithful(&Task::Caption) && partial.faithful(&Task::Answer("what flies?".into())));
    }

    #[test]
    fn prompt_fits_the_budget_by_dropping_history_then_objects() {
        let s = scene(&[("person", 2), ("dog", 1), ("car", 1)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        let history = vec![Exchange { question: "Is anyone there?".into(), answer: "Yes, two people.".into() }];
        let mut words_in = |m: &[Message]| m.iter().map(|m| m.content.split_whitespace().count()).sum::<usize>();
        let task = Task::Answer("How many cats are there?".into());
        let full = facts.prompt(&task, &history, 1000, &mut words_in).unwrap();
        assert_eq!(full.history_used, 1);
        assert!(full.facts.contains("2 people, a car and a dog") && full.facts.contains("no cats"), "{}", full.facts);
        let tight = facts.prompt(&task, &history, 19, &mut words_in).unwrap();
        assert_eq!(tight.history_used, 0);
        assert!(tight.dropped.contains(&"objects".to_string()), "{tight:?}");
        assert!(facts.prompt(&task, &history, 3, &mut words_in).is_none());
    }

    #[test]
    fn tacked_on_clauses_are_cut() {
        let cut = |t: &str| answer_sentence(t).unwrap_or_default();
        assert_eq!(cut("The photo shows 9 people and 6 kites, with 9 people on the left. More."), "The photo shows 9 people and 6 kites.");
        assert_eq!(cut("The photo shows a cow, a dog, and a person."), "The photo shows a cow, a dog, and a person.");
        assert_eq!(cut("A cat, which is a classic example of art."), "A cat.");
        assert_eq!(cut("A bird with a human face."), "A bird.");
        assert_eq!(answer_sentence("a horse named Lionel with a horse named"), None);
    }

    #[test]
    fn first_sentence_keeps_decimals() {
        assert_eq!(first_sentence(" There are 8 people. And more"), "There are 8 people.");
        assert_eq!(first_sentence("It costs 3.5 euros! Yes"), "It costs 3.5 euros!");
        assert_eq!(first_sentence("no stop"), "no stop");
    }
}
